package meshtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Redis is a running redis-server (Debian's redis-server package).
type Redis struct {
	// Addr is host:port.
	Addr string
	cmd  *exec.Cmd
}

// StartRedis starts a redis-server on host and a free port, with no
// persistence, and stops it when the test ends. A missing redis-server is
// a failure, never a skip (`apt-get install -y redis-server redis-tools`).
func StartRedis(t testing.TB, host string) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("these tests need a real Redis: %v (apt-get install -y redis-server redis-tools)", err)
	}
	port := FreePort(host)
	cmd := exec.Command(bin, "--bind", host, "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--protected-mode", "no", "--dir", t.TempDir(), "--loglevel", "warning")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r := &Redis{Addr: net.JoinHostPort(host, strconv.Itoa(port)), cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		reply, err := RedisCommand(r.Addr, "PING")
		if err == nil && reply == "+PONG" {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s not answering PING: %v %q; its output: %s", r.Addr, err, reply, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RedisCommand sends one inline command to the Redis at addr and returns
// the first line of the reply ("+PONG", "$3" ...).
func RedisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return RedisDo(c, bufio.NewReader(c), args...)
}

// RedisDo sends one command on an open connection (RESP array) and reads
// the reply: a status or error line as it is, a bulk string as its value.
func RedisDo(c net.Conn, br *bufio.Reader, args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "$") {
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return line, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return line, nil
}
