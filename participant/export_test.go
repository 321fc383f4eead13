package participant

import (
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// Server returns the participant's gRPC service, to call without a network.
func (p *Participant) Server() decreev1.ParticipantServer {
	return p.Service()
}

// Backoff returns the wait before outcome query attempt+1.
func (p *Participant) Backoff(attempt int) time.Duration {
	return p.backoff(attempt)
}
