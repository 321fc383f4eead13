// Package txnspec is the one definition of a well-formed transaction
// request, shared by the coordinator (client requests), the participant SDK
// (the coordinator's calls) and the client: the id format, participant
// addresses and the size limits. A request one side accepts, the other
// side accepts too, so nothing is prepared that cannot later be resolved.
package txnspec

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"
)

// IDLen is the length of a transaction id: a canonical UUID.
const IDLen = 36

// Defaults of Limits, also the coordinator's --max-branches and
// --max-payload defaults.
const (
	DefaultMaxParticipants = 64
	DefaultMaxPayload      = 1 << 20
)

// ParseID checks that id is a UUIDv7 in canonical text form and returns
// the millisecond timestamp it carries. Ids must be time-ordered so that an
// old id without a record can be told apart (forgotten) from a new one
// (presumed aborted). Anything else, control characters included, is
// refused.
func ParseID(id string) (time.Time, error) {
	if id == "" {
		return time.Time{}, errors.New("transaction id is empty")
	}
	if len(id) != IDLen {
		return time.Time{}, fmt.Errorf("transaction id %.64q is not a canonical UUID (36 characters)", id)
	}
	var raw [16]byte
	j := 0
	for i := 0; i < len(id); i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if id[i] != '-' {
				return time.Time{}, fmt.Errorf("transaction id %q is not a canonical UUID", id)
			}
			i--
			continue
		}
		hi, ok1 := unhex(id[i])
		lo, ok2 := unhex(id[i+1])
		if !ok1 || !ok2 {
			return time.Time{}, fmt.Errorf("transaction id %q is not a canonical UUID", id)
		}
		raw[j] = hi<<4 | lo
		j++
	}
	if raw[6]>>4 != 7 || raw[8]>>6 != 0b10 {
		return time.Time{}, fmt.Errorf("transaction id %q is not a UUIDv7 (time-ordered)", id)
	}
	ms := int64(raw[0])<<40 | int64(raw[1])<<32 | int64(raw[2])<<24 | int64(raw[3])<<16 | int64(raw[4])<<8 | int64(raw[5])
	return time.UnixMilli(ms), nil
}

// unhex decodes one hex digit, either case (as encoding/hex does; this runs
// for every id on every call, where hex.Decode's slice handling showed).
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// maxHostLen is the longest DNS name; an IPv6 literal is shorter.
const maxHostLen = 253

// ValidateAddr checks that addr is host:port with a non-empty host free of
// control characters and spaces, and a port in 1..65535.
func ValidateAddr(addr string) error {
	_, _, err := ParseAddr(addr)
	return err
}

// ParseAddr is ValidateAddr returning the parts: the host as written and
// the port as a number (so "h:080" and "h:80" are one port). It is the one
// parser of participant and peer addresses; callers that compare or
// resolve addresses take the parts from it rather than split them again.
func ParseAddr(addr string) (host string, port uint16, err error) {
	for _, r := range addr {
		if r <= ' ' || r == 0x7f {
			return "", 0, fmt.Errorf("address %q contains a control character or space", addr)
		}
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "" {
		return "", 0, fmt.Errorf("address %q has no host", addr)
	}
	if len(host) > maxHostLen {
		return "", 0, fmt.Errorf("address %.40q...: host of %d bytes exceeds the limit of %d", addr, len(host), maxHostLen)
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("address %q has no valid port", addr)
	}
	return host, uint16(p), nil
}

// Limits bounds a transaction. Zero fields take the defaults.
type Limits struct {
	// MaxParticipants bounds a transaction's participant list (its
	// branches).
	MaxParticipants int
	// MaxPayload bounds one branch's payload, in bytes.
	MaxPayload int
}

// WithDefaults fills in the zero fields.
func (l Limits) WithDefaults() Limits {
	if l.MaxParticipants <= 0 {
		l.MaxParticipants = DefaultMaxParticipants
	}
	if l.MaxPayload <= 0 {
		l.MaxPayload = DefaultMaxPayload
	}
	return l
}

// CheckParticipants checks a transaction's participant list: at least one,
// at most MaxParticipants, each a valid address, none twice.
func (l Limits) CheckParticipants(ps []string) error {
	l = l.WithDefaults()
	if len(ps) == 0 {
		return errors.New("a transaction needs at least one participant")
	}
	if len(ps) > l.MaxParticipants {
		return fmt.Errorf("%d participants exceed the limit of %d", len(ps), l.MaxParticipants)
	}
	// A short list (the default limit is 64) is checked for duplicates by
	// comparing with those before, which costs less than building a set on
	// a path every call takes; a long one, allowed by a raised limit, gets
	// a set, so a request cannot make the check quadratic.
	var seen map[string]struct{}
	if len(ps) > smallList {
		seen = make(map[string]struct{}, len(ps))
	}
	for i, p := range ps {
		if err := ValidateAddr(p); err != nil {
			return fmt.Errorf("participant %d: %w", i, err)
		}
		dup := false
		if seen != nil {
			_, dup = seen[p]
			seen[p] = struct{}{}
		} else {
			dup = slices.Contains(ps[:i], p)
		}
		if dup {
			return fmt.Errorf("participant %d: %s appears twice", i, p)
		}
	}
	return nil
}

// smallList is the longest participant list CheckParticipants checks for
// duplicates by pairwise comparison.
const smallList = 64

// CheckPayload checks the size of one branch's payload.
func (l Limits) CheckPayload(n int) error {
	l = l.WithDefaults()
	if n > l.MaxPayload {
		return fmt.Errorf("payload of %d bytes exceeds the limit of %d", n, l.MaxPayload)
	}
	return nil
}
