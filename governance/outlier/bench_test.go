package outlier

import "testing"

func benchDetector(b *testing.B) (*Detector, []*Host) {
	d, err := New(Config{Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, MaxEjectionPercent: 50}, nil)
	if err != nil {
		b.Fatal(err)
	}
	hosts := make([]*Host, 10)
	for i := range hosts {
		hosts[i] = &Host{}
	}
	d.SetHosts(hosts)
	return d, hosts
}

// The common case: a healthy endpoint answers.
func BenchmarkReportSuccess(b *testing.B) {
	d, hosts := benchDetector(b)
	b.ReportAllocs()
	for b.Loop() {
		d.Report(hosts[3], Success)
	}
}

// An endpoint failing now and then, never enough to be ejected.
func BenchmarkReportMixed(b *testing.B) {
	d, hosts := benchDetector(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		o := Success
		if i%4 != 0 {
			o = GatewayError
		}
		d.Report(hosts[3], o)
		i++
	}
}

func BenchmarkReportSuccessParallel(b *testing.B) {
	d, hosts := benchDetector(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			d.Report(hosts[i%len(hosts)], Success)
			i++
		}
	})
}
