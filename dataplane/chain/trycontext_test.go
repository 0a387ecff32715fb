package chain

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A try's context behaves as context.WithDeadline's whether or not
// anything waits on it.
func TestTryContext(t *testing.T) {
	t.Run("deadline passes without a waiter", func(t *testing.T) {
		c := newTryCtx(context.Background(), time.Now().Add(20*time.Millisecond))
		if c.Err() != nil {
			t.Fatalf("Err before the deadline: %v", c.Err())
		}
		time.Sleep(30 * time.Millisecond)
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err after the deadline: %v", c.Err())
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed after the deadline")
		}
	})
	t.Run("Done closes at the deadline", func(t *testing.T) {
		c := newTryCtx(context.Background(), time.Now().Add(20*time.Millisecond))
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed")
		}
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err: %v", c.Err())
		}
	})
	t.Run("a child's AfterFunc runs at the deadline", func(t *testing.T) {
		c := newTryCtx(context.Background(), time.Now().Add(20*time.Millisecond))
		ran := make(chan struct{})
		context.AfterFunc(c, func() { close(ran) })
		select {
		case <-ran:
		case <-time.After(5 * time.Second):
			t.Fatal("AfterFunc did not run")
		}
	})
	t.Run("parent cancel", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		c := newTryCtx(parent, time.Now().Add(time.Hour))
		lazy := newTryCtx(parent, time.Now().Add(time.Hour))
		cancel()
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed when the parent was cancelled")
		}
		if !errors.Is(c.Err(), context.Canceled) || !errors.Is(lazy.Err(), context.Canceled) {
			t.Fatalf("Err: %v, %v", c.Err(), lazy.Err())
		}
	})
	t.Run("cancel before and after Done", func(t *testing.T) {
		before := newTryCtx(context.Background(), time.Now().Add(time.Hour))
		before.cancel()
		if !errors.Is(before.Err(), context.Canceled) {
			t.Fatalf("Err: %v", before.Err())
		}
		select {
		case <-before.Done():
		default:
			t.Fatal("Done of a cancelled context not closed")
		}
		after := newTryCtx(context.Background(), time.Now().Add(time.Hour))
		done := after.Done()
		after.cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed by cancel")
		}
	})
	t.Run("values and the earlier parent deadline", func(t *testing.T) {
		type key struct{}
		parent, cancel := context.WithDeadline(context.WithValue(context.Background(), key{}, "v"), time.Now().Add(time.Minute))
		defer cancel()
		c := newTryCtx(parent, time.Now().Add(time.Hour))
		if d, _ := c.Deadline(); !d.Before(time.Now().Add(2 * time.Minute)) {
			t.Errorf("deadline %v, want the parent's", d)
		}
		if c.Value(key{}) != "v" {
			t.Error("value of the parent lost")
		}
		<-time.After(0)
		_ = c.Done()
		if c.Value(key{}) != "v" {
			t.Error("value of the parent lost once waited on")
		}
	})
}
