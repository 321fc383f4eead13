package bank

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/decree-tx/decree/participant"
	bankv1 "github.com/decree-tx/decree/proto/bank/v1"
	"github.com/decree-tx/decree/txlog"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ServerOptions configures NewServer.
type ServerOptions struct {
	// Name names the bank in logs and Balances.
	Name string
	// Dir is the participant log's directory.
	Dir string
	// Coordinators lists the coordinator endpoints (host:port) asked for
	// the outcome of in-doubt transactions.
	Coordinators []string
	// Accounts accounts (AccountName(0) onwards) holding InitialBalance
	// each are created on first start, when the log holds no account.
	Accounts       int
	InitialBalance int64
	// InDoubtTimeout is participant.Options.InDoubtTimeout.
	InDoubtTimeout time.Duration
	// Logger receives the bank's and the SDK's logs.
	Logger zerolog.Logger
}

func (o ServerOptions) validate() error {
	switch {
	case o.Name == "":
		return errors.New("empty bank name")
	case o.Dir == "":
		return errors.New("empty directory")
	case o.Accounts < 0:
		return fmt.Errorf("negative account count %d", o.Accounts)
	case o.InitialBalance < 0:
		return fmt.Errorf("negative initial balance %d", o.InitialBalance)
	case o.InitialBalance > 0 && int64(o.Accounts) > maxTotal/o.InitialBalance:
		return errors.New("total of the initial balances overflows")
	}
	return nil
}

// maxTotal bounds the sum of all balances.
const maxTotal = math.MaxInt64

// Server bundles a Bank, its participant SDK and the Bank audit service.
type Server struct {
	name string
	log  zerolog.Logger
	plog *txlog.ParticipantLog
	bank *Bank
	part *participant.Participant

	closeOnce sync.Once
	closeErr  error
}

// NewServer opens the participant log in opts.Dir, creates the accounts if
// the log has none, restores the reservations of prepared transactions and
// builds the participant. Serve it with Register, then Start.
func NewServer(opts ServerOptions) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("new bank server: %w", err)
	}
	plog, err := txlog.OpenParticipantLog(opts.Dir, txlog.Options{Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("new bank server: %w", err)
	}
	s, err := newServer(opts, plog)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("new bank server: %w", err), plog.Close())
	}
	return s, nil
}

func newServer(opts ServerOptions, plog *txlog.ParticipantLog) (*Server, error) {
	s := &Server{
		name: opts.Name, plog: plog,
		log:  opts.Logger.With().Str("bank", opts.Name).Logger(),
		bank: NewBank(opts.Name, opts.Logger),
	}
	if err := s.seed(opts.Accounts, opts.InitialBalance); err != nil {
		return nil, err
	}
	if err := s.bank.restore(plog.Scan); err != nil {
		return nil, err
	}
	part, err := participant.New(s.bank, participant.Options{
		Log:            plog,
		Coordinators:   opts.Coordinators,
		InDoubtTimeout: opts.InDoubtTimeout,
		Logger:         opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	s.part = part
	return s, nil
}

// seed creates n accounts holding initial each, in one synced batch,
// unless the log holds accounts already. The keys are the ones the Bank
// sees through the SDK's Writer: the log keeps every user key apart from
// its own records, whoever writes it.
func (s *Server) seed(n int, initial int64) error {
	var exists bool
	err := s.plog.Scan([]byte(acctPrefix), func(_, _ []byte) bool {
		exists = true
		return false
	})
	if err != nil {
		return fmt.Errorf("seed accounts: %w", err)
	}
	if exists || n == 0 {
		return nil
	}
	b := s.plog.NewBatch()
	for i := range n {
		b.Set(acctKey(AccountName(i)), encodeBalance(initial))
	}
	if err := s.plog.Commit(b); err != nil {
		return fmt.Errorf("seed accounts: %w", err)
	}
	s.log.Info().Int("accounts", n).Int64("balance", initial).Msg("created accounts")
	return nil
}

// Register registers the Participant service and the Bank service on g.
func (s *Server) Register(g *grpc.Server) {
	s.part.Register(g)
	bankv1.RegisterBankServer(g, bankService{s: s})
}

// Start starts the SDK's recovery loop, which resolves in-doubt
// transactions with the coordinators, until ctx ends or Close.
func (s *Server) Start(ctx context.Context) {
	s.part.Start(ctx)
}

// Close stops the SDK and closes the log. Stop the gRPC server first.
// Later calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.part.Stop()
		if err := s.plog.Close(); err != nil {
			s.closeErr = fmt.Errorf("close bank %s: %w", s.name, err)
		}
	})
	return s.closeErr
}

// Balances returns a consistent snapshot of the bank's committed accounts
// and reservations, with the number of in-doubt transactions.
func (s *Server) Balances() (*bankv1.BalancesResponse, error) {
	resp := &bankv1.BalancesResponse{Bank: s.name}
	if err := s.part.ReadState(func(r participant.Reader) error { return readBalances(r, resp) }); err != nil {
		return nil, fmt.Errorf("balances of %s: %w", s.name, err)
	}
	resp.InDoubt = uint32(len(s.part.InDoubt()))
	return resp, nil
}

// readBalances fills resp's accounts, total and reservations from r.
func readBalances(r participant.Reader, resp *bankv1.BalancesResponse) error {
	locks := make(map[string]string)
	err := r.Scan([]byte(lockPrefix), func(key, value []byte) bool {
		locks[string(key[len(lockPrefix):])] = string(value)
		return true
	})
	if err != nil {
		return fmt.Errorf("scan locks: %w", err)
	}
	resp.Reservations = uint32(len(locks))
	var bad error
	err = r.Scan([]byte(acctPrefix), func(key, value []byte) bool {
		name := string(key[len(acctPrefix):])
		v, err := decodeBalance(value)
		if err != nil {
			bad = fmt.Errorf("account %q: %w", name, err)
			return false
		}
		resp.Accounts = append(resp.Accounts, &bankv1.Account{Name: name, Balance: v, ReservedBy: locks[name]})
		resp.Total += v
		return true
	})
	if err != nil {
		return fmt.Errorf("scan accounts: %w", err)
	}
	return bad
}

// bankService is the gRPC face of a Server's Balances.
type bankService struct {
	bankv1.UnimplementedBankServer
	s *Server
}

func (b bankService) Balances(ctx context.Context, _ *bankv1.BalancesRequest) (*bankv1.BalancesResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	resp, err := b.s.Balances()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return resp, nil
}
