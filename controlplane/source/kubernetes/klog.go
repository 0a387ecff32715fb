package kubernetes

import (
	"sync"

	"github.com/go-logr/logr"
	"github.com/rs/zerolog"
	"k8s.io/klog/v2"
)

var klogOnce sync.Once

// routeKlog sends client-go's own logs (klog, process-wide) to log at
// debug level, once per process: the source reports failures itself, and
// klog's text lines would break the JSON log stream.
func routeKlog(log zerolog.Logger) {
	klogOnce.Do(func() {
		klog.SetLogger(logr.New(&klogSink{log: log.With().Str("from", "client-go").Logger()}))
	})
}

// klogSink is a logr.LogSink writing to zerolog.
type klogSink struct {
	log  zerolog.Logger
	name string
}

func (k *klogSink) Init(logr.RuntimeInfo)  {}
func (k *klogSink) Enabled(level int) bool { return k.log.Debug().Enabled() }

func (k *klogSink) Info(level int, msg string, kv ...any) {
	k.log.Debug().Fields(kv).Str("logger", k.name).Msg(msg)
}

func (k *klogSink) Error(err error, msg string, kv ...any) {
	k.log.Debug().Err(err).Fields(kv).Str("logger", k.name).Msg(msg)
}

func (k *klogSink) WithValues(kv ...any) logr.LogSink {
	return &klogSink{log: k.log.With().Fields(kv).Logger(), name: k.name}
}

func (k *klogSink) WithName(name string) logr.LogSink {
	if k.name != "" {
		name = k.name + "/" + name
	}
	return &klogSink{log: k.log, name: name}
}
