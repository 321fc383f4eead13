package main

import (
	"fmt"
	"strconv"
	"strings"
)

// byteSize is a flag value in bytes: plain digits, or with a binary unit
// (KiB, MiB, GiB).
type byteSize uint64

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"B", 0}}

func (b *byteSize) Set(s string) error {
	v, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(v)
	return nil
}

func (b byteSize) String() string {
	for _, u := range byteUnits {
		if u.shift > 0 && b != 0 && uint64(b)%(1<<u.shift) == 0 && uint64(b)>>u.shift < 1<<10 {
			return fmt.Sprintf("%d%s", uint64(b)>>u.shift, u.suffix)
		}
	}
	return strconv.FormatUint(uint64(b), 10)
}

func parseByteSize(s string) (uint64, error) {
	num, shift := strings.TrimSpace(s), uint(0)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, shift = strings.TrimSpace(rest), u.shift
			break
		}
	}
	v, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size in bytes (e.g. 33554432, 32MiB, 1GiB)", s)
	}
	if v > (1<<64-1)>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return v << shift, nil
}
