// Package opts holds the checks that options structs share in their
// Validate methods, so that every package words the same mistake the same
// way.
package opts

import (
	"fmt"
	"time"
)

// NotNegative refuses a negative setting of field; zero takes the default.
func NotNegative[T int | int64 | time.Duration](field string, v T) error {
	if v < 0 {
		return fmt.Errorf("%s is %v: it must not be negative (zero takes the default)", field, v)
	}
	return nil
}

// OrDefault describes an effective setting for an error message: v, or
// def when v is zero.
func OrDefault[T comparable](v, def T) string {
	var zero T
	if v == zero {
		return fmt.Sprintf("%v, the default", def)
	}
	return fmt.Sprint(v)
}
