package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The listener holds at most its limit of connections: one more is closed
// at once, and a slot freed by a close is used again.
func TestLimitListenerClosesConnectionsPastTheLimit(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	lis := newLimitListener(tcp, 1, zerolog.New(logs))
	defer lis.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", tcp.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	first := <-accepted
	if err := closedByPeer(dial()); err != nil {
		t.Fatalf("connection past the limit: %v", err)
	}
	if !strings.Contains(logs.String(), "too many open connections") {
		t.Fatalf("refusal not logged: %q", logs.String())
	}
	first.Close()
	first.Close() // a second close must not free a second slot
	c := dial()
	second := <-accepted
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := bufio.NewReader(second).ReadByte(); err != nil || b != 'x' {
		t.Fatalf("the freed slot was not reused: %q %v", b, err)
	}
	if err := closedByPeer(dial()); err != nil {
		t.Fatalf("a double close freed two slots: %v", err)
	}
}

// syncBuffer is a buffer the listener's goroutine writes while the test
// reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// closedByPeer says why c was not closed by the other end (nil if it was).
func closedByPeer(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return fmt.Errorf("read: %v, want the connection closed", err)
}

// decree status fails when no endpoint answers, after printing what it saw.
func TestStatusFailsWhenNoEndpointAnswers(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"status", "--endpoints", "127.0.0.1:1,127.0.0.1:2", "--timeout", "200ms"}, &stdout, &stderr)
	if code == 0 {
		t.Fatalf("exit 0 with every endpoint unreachable; stdout:\n%s", stdout.String())
	}
	if strings.Count(stdout.String(), "unreachable") != 2 || !strings.Contains(stderr.String(), "none of the 2 endpoints answered") {
		t.Fatalf("stdout:\n%s\nstderr: %s", stdout.String(), stderr.String())
	}
}
