package observability_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/observability"
)

// openPTY returns both ends of a new pseudo-terminal.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	return ptmx, tty
}

// readLine reads what the terminal shows of one line.
func readLine(t *testing.T, ptmx *os.File) string {
	t.Helper()
	_ = ptmx.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(ptmx).ReadString('\n')
	if err != nil {
		t.Fatalf("read pty: %v (got %q)", err, line)
	}
	return line
}

// `--log-format text` colours only a terminal, and not with NO_COLOR.
func TestTextLogColourOnlyOnATerminal(t *testing.T) {
	text := config.Log{Level: "info", Format: "text"}
	const esc = "\x1b["

	file, err := os.Create(filepath.Join(t.TempDir(), "mesh.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	log := observability.NewLoggerEnv(text, file, observability.LogEnv{})
	log.Warn().Str("component", "agent").Msg("to a file")
	b, _ := os.ReadFile(file.Name())
	if !strings.Contains(string(b), "to a file") || strings.Contains(string(b), esc) {
		t.Errorf("text log to a file has colour codes (or nothing): %q", b)
	}

	ptmx, tty := openPTY(t)
	ttyLog := observability.NewLoggerEnv(text, tty, observability.LogEnv{})
	ttyLog.Warn().Msg("to a terminal")
	if line := readLine(t, ptmx); !strings.Contains(line, "to a terminal") || !strings.Contains(line, esc) {
		t.Errorf("text log to a terminal is not coloured: %q", line)
	}
	noColor := observability.NewLoggerEnv(text, tty, observability.LogEnv{NoColor: true})
	noColor.Warn().Msg("NO_COLOR set")
	if line := readLine(t, ptmx); !strings.Contains(line, "NO_COLOR set") || strings.Contains(line, esc) {
		t.Errorf("text log with NO_COLOR has colour codes: %q", line)
	}
}

// journalStream is JOURNAL_STREAM for f, as systemd sets it.
func journalStream(t *testing.T, f *os.File) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// Under systemd (stderr is the stream JOURNAL_STREAM names) every line
// carries its syslog priority for journald, the JSON unchanged after it;
// anywhere else the lines are plain JSON. Durations carry their unit.
func TestJournalPriorityPrefix(t *testing.T) {
	dir := t.TempDir()
	stream, err := os.Create(filepath.Join(dir, "journal-stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	other, err := os.Create(filepath.Join(dir, "redirected"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	env := observability.LogEnv{JournalStream: journalStream(t, stream)}
	jsonCfg := config.Log{Level: "debug", Format: "json"}

	log := observability.NewLoggerEnv(jsonCfg, stream, env).With().Str("component", "agent").Logger()
	log.Debug().Msg("a debug line")
	log.Info().Dur("drain_period", 5*time.Second).Msg("draining")
	log.Warn().Str("watch", "orders").Msg("a warn line")
	log.Error().Msg("an error line")
	// stderr redirected elsewhere: JOURNAL_STREAM no longer applies.
	redirected := observability.NewLoggerEnv(jsonCfg, other, env)
	redirected.Warn().Msg("not the journal")
	// text under journald: the prefix too, and no colour.
	textLog := observability.NewLoggerEnv(config.Log{Level: "info", Format: "text"}, stream, env)
	textLog.Warn().Msg("text warn")

	b, _ := os.ReadFile(stream.Name())
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("journal stream got %d lines, want 5:\n%s", len(lines), b)
	}
	for i, want := range []struct {
		prio, msg string
	}{{"<7>", "a debug line"}, {"<6>", "draining"}, {"<4>", "a warn line"}, {"<3>", "an error line"}} {
		rest, ok := strings.CutPrefix(lines[i], want.prio)
		if !ok {
			t.Errorf("line %d = %q, want the prefix %s", i, lines[i], want.prio)
			continue
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(rest), &fields); err != nil {
			t.Errorf("line %d after its prefix is not JSON: %q: %v", i, rest, err)
			continue
		}
		if fields["message"] != want.msg || fields["component"] != "agent" {
			t.Errorf("line %d fields = %v", i, fields)
		}
		if want.msg == "draining" && fields["drain_period"] != "5s" {
			t.Errorf("drain_period = %#v, want \"5s\"", fields["drain_period"])
		}
		if want.msg == "a warn line" && fields["watch"] != "orders" {
			t.Errorf("warn line lost a field: %v", fields)
		}
	}
	if !strings.HasPrefix(lines[4], "<4>") || !strings.Contains(lines[4], "text warn") || strings.Contains(lines[4], "\x1b[") {
		t.Errorf("text line to the journal = %q, want <4> and no colour", lines[4])
	}
	if o, _ := os.ReadFile(other.Name()); !strings.HasPrefix(string(o), "{") {
		t.Errorf("a line off the journal stream = %q, want plain JSON", o)
	}
}
