package opts

import (
	"strings"
	"testing"
	"time"
)

func TestNotNegative(t *testing.T) {
	if err := NotNegative("Tick", time.Duration(0)); err != nil {
		t.Fatalf("zero refused: %v", err)
	}
	if err := NotNegative("Tick", 5); err != nil {
		t.Fatalf("5 refused: %v", err)
	}
	err := NotNegative("Tick", -time.Second)
	if err == nil || !strings.Contains(err.Error(), "Tick is -1s") {
		t.Fatalf("-1s: %v", err)
	}
}

func TestOrDefault(t *testing.T) {
	if got := OrDefault(0, 7); got != "7, the default" {
		t.Fatalf("OrDefault(0, 7) = %q", got)
	}
	if got := OrDefault(3, 7); got != "3" {
		t.Fatalf("OrDefault(3, 7) = %q", got)
	}
}
