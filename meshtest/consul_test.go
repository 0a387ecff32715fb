package meshtest

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func freeConsulPorts() []int { return FreePorts("127.0.0.1", len(consulPorts)) }

// A Consul that exits at start (here: a configuration it refuses) is
// reported as soon as it exited, not after the 30 s leader wait, with the
// end of its log saying why.
func TestConsulThatExitsIsReportedAtOnce(t *testing.T) {
	start := time.Now()
	c, rec, err := startConsulRecorded(ConsulBinary(), freeConsulPorts, []string{"-datacenter", "no such dc!"})
	if err == nil {
		c.Stop()
		t.Fatal("consul started with an invalid datacenter name")
	}
	took := time.Since(start)
	t.Logf("after %s: %v", took, err)
	if errors.Is(err, errPortTaken) || len(rec.errs) != 1 {
		t.Errorf("taken for a port clash (%d attempts): %v", len(rec.errs), err)
	}
	if rec.exitedAt.IsZero() {
		t.Fatalf("exit not seen: %v", err)
	}
	if late := time.Since(rec.exitedAt); late > time.Second {
		t.Errorf("reported %s after consul exited", late)
	}
	if took > consulLeaderWait/2 {
		t.Errorf("reported after %s", took)
	}
	for _, want := range []string{"consul exited at start (exit status 1)", "last lines of its log", "datacenter"} {
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

// A port another program took before Consul could bind it, and a port
// given to two of Consul's listeners ("already configured for"), are
// clashes: the helper starts again on new ports.
func TestConsulPortClashStartsAgain(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		name  string
		first func() []int // the first port set
		want  string       // in the first attempt's error
	}{
		{"port taken", func() []int {
			p := freeConsulPorts()
			p[0] = takenPort // http
			return p
		}, "address already in use"},
		{"port given twice", func() []int {
			p := freeConsulPorts()
			p[3] = p[0] // dns on the http port
			return p
		}, "already configured for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			pick := func() []int {
				if calls++; calls == 1 {
					return tc.first()
				}
				return freeConsulPorts()
			}
			c, rec, err := startConsulRecorded(ConsulBinary(), pick, nil)
			if err != nil {
				t.Fatalf("no start after a clash: %v", err)
			}
			defer c.Stop()
			t.Logf("started on the second set after: %v", rec.errs[0])
			if len(rec.errs) != 1 || !errors.Is(rec.errs[0], errPortTaken) || !strings.Contains(rec.errs[0].Error(), tc.want) {
				t.Fatalf("attempts before the start: %v; want one port clash saying %q", rec.errs, tc.want)
			}
			if _, err := c.Client.Agent().Self(); err != nil {
				t.Errorf("consul started on new ports does not answer: %v", err)
			}
		})
	}
}
