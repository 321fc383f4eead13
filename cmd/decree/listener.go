package main

import (
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// limitListener accepts at most max connections at a time. One past that
// is closed at once, so its client fails fast instead of waiting in the
// backlog; refusals are logged, sampled.
type limitListener struct {
	net.Listener
	slots chan struct{}
	log   zerolog.Logger
}

func newLimitListener(l net.Listener, max int, log zerolog.Logger) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, max),
		log: log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			l.log.Warn().Str("remote", c.RemoteAddr().String()).Int("limit", cap(l.slots)).
				Msg("connection refused: too many open connections")
			c.Close()
		}
	}
}

// limitedConn gives its slot back when closed (once, however often Close
// is called).
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
