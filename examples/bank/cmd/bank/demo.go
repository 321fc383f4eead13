package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/examples/bank"
	"github.com/decree-tx/decree/examples/bank/workload"
)

type demoFlags struct {
	duration   time.Duration
	workers    int
	banks      int
	accounts   int
	initial    int64
	decree     string
	killLeader bool
	keep       bool
	seed       uint64
	logLevel   string
}

func runDemo(args []string, stdout, stderr io.Writer) error {
	var f demoFlags
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.DurationVar(&f.duration, "duration", 30*time.Second, "how long the workload runs")
	fs.IntVar(&f.workers, "workers", 16, "concurrent transfers")
	fs.IntVar(&f.banks, "banks", 3, "bank participants")
	fs.IntVar(&f.accounts, "accounts", 100, "accounts per bank")
	fs.Int64Var(&f.initial, "initial-balance", 1000, "each account's opening balance")
	fs.StringVar(&f.decree, "decree", "", "path of the decree binary (default: next to this one, or on PATH)")
	fs.BoolVar(&f.killLeader, "kill-leader", true, "kill -9 the coordinator leader halfway through")
	fs.BoolVar(&f.keep, "keep", false, "keep the demo's data and logs")
	fs.Uint64Var(&f.seed, "seed", 1, "workload random seed")
	fs.StringVar(&f.logLevel, "log-level", "error", "log level of the in-process banks")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if f.duration <= 0 || f.workers <= 0 || f.banks <= 0 || f.accounts <= 0 || f.initial < 0 || f.banks*f.accounts < 2 {
		return usagef("--duration, --workers, --banks and --accounts must be positive (and give at least two accounts)")
	}
	bin, err := findDecree(f.decree)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return demo(ctx, f, bin, stdout, log)
}

// demoRun holds what the demo started, so it can all be stopped.
type demoRun struct {
	f      demoFlags
	out    io.Writer
	dir    string
	coords *coordinators
	cl     *client.Client
	banks  []*bank.Server
	grpcs  []*grpc.Server
	addrs  []string
}

func demo(ctx context.Context, f demoFlags, bin string, out io.Writer, log zerolog.Logger) (err error) {
	dir, err := os.MkdirTemp("", "decree-demo-")
	if err != nil {
		return err
	}
	d := &demoRun{f: f, out: out, dir: dir}
	defer d.close()
	fmt.Fprintf(out, "Decree bank demo: 3 coordinators, %d banks x %d accounts, %d workers, %v (data and logs in %s)\n",
		f.banks, f.accounts, f.workers, f.duration, dir)
	if err := d.startCluster(ctx, bin); err != nil {
		return err
	}
	if err := d.startBanks(ctx, log); err != nil {
		return err
	}
	final, failover, err := d.runWorkload(ctx)
	if err != nil {
		return err
	}
	return d.report(final, failover)
}

func (d *demoRun) startCluster(ctx context.Context, bin string) error {
	var err error
	if d.coords, err = startCoordinators(bin, d.dir, 3); err != nil {
		return err
	}
	if d.cl, err = client.Dial(d.coords.addrs, client.Options{}); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	lead, err := awaitLeader(wctx, d.cl, 0)
	if err != nil {
		return fmt.Errorf("coordinator cluster did not elect a leader (logs in %s): %w", d.dir, err)
	}
	fmt.Fprintf(d.out, "coordinators up at %v; node %d leads\n", d.coords.addrs, lead.ID)
	return nil
}

func (d *demoRun) startBanks(ctx context.Context, log zerolog.Logger) error {
	addrs, err := freeAddrs(d.f.banks)
	if err != nil {
		return err
	}
	for i, addr := range addrs {
		name := fmt.Sprintf("bank-%d", i+1)
		srv, err := bank.NewServer(bank.ServerOptions{Name: name, Dir: filepath.Join(d.dir, name),
			Coordinators: d.coords.addrs, Accounts: d.f.accounts, InitialBalance: d.f.initial,
			Logger: log.With().Str("bank", name).Logger()})
		if err != nil {
			return err
		}
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			srv.Close()
			return err
		}
		d.banks = append(d.banks, srv)
		d.grpcs = append(d.grpcs, serveBank(ctx, srv, lis))
		d.addrs = append(d.addrs, addr)
	}
	fmt.Fprintf(d.out, "banks up at %v\n", d.addrs)
	return nil
}

// failover is what the leader kill showed.
type failover struct {
	killed, next uint64
	at, took     time.Duration
	err          error
}

func (d *demoRun) runWorkload(ctx context.Context) (workload.Snapshot, *failover, error) {
	w, err := workload.New(workload.Config{Client: d.cl, Banks: d.addrs, Accounts: d.f.accounts,
		Workers: d.f.workers, Duration: d.f.duration, Seed: d.f.seed})
	if err != nil {
		return workload.Snapshot{}, nil, err
	}
	p := newProgress(d.out, w.Stats(), d.leaderLabel)
	go p.run(ctx)
	fo := make(chan *failover, 1)
	if d.f.killLeader {
		go func() { fo <- d.killLeaderAt(ctx, p, d.f.duration/2) }()
	} else {
		fo <- nil
	}
	final := w.Run(ctx)
	p.stop()
	return final, <-fo, nil
}

func (d *demoRun) leaderLabel(ctx context.Context) string {
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if lead, ok := client.Leader(d.cl.Status(sctx)); ok {
		return fmt.Sprintf("leader %d", lead.ID)
	}
	return "leader: electing"
}

// killLeaderAt waits, kills the leader with SIGKILL, times the election of
// a new one, then restarts the killed node so it rejoins.
func (d *demoRun) killLeaderAt(ctx context.Context, p *progress, after time.Duration) *failover {
	start := time.Now()
	select {
	case <-time.After(after):
	case <-ctx.Done():
		return &failover{err: ctx.Err()}
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	lead, err := awaitLeader(sctx, d.cl, 0)
	cancel()
	if err != nil {
		return &failover{err: err}
	}
	f := &failover{killed: lead.ID, at: time.Since(start)}
	d.coords.kill(lead.ID)
	killedAt := time.Now()
	p.println(">>> killed the coordinator leader, node %d (kill -9)", lead.ID)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	next, err := awaitLeader(wctx, d.cl, lead.ID)
	if err != nil {
		f.err = err
		return f
	}
	f.next, f.took = next.ID, time.Since(killedAt)
	p.println(">>> node %d took over as leader after %v", next.ID, f.took.Round(time.Millisecond))
	if err := d.coords.start(lead.ID); err != nil {
		p.println(">>> could not restart node %d: %v", lead.ID, err)
	} else {
		p.println(">>> restarted node %d; it rejoins as a follower", lead.ID)
	}
	return f
}

func (d *demoRun) report(final workload.Snapshot, fo *failover) error {
	expected := int64(d.f.banks) * int64(d.f.accounts) * d.f.initial
	fmt.Fprintln(d.out, "\nauditing: waiting for every transfer to settle...")
	auditErr := audit(io.Discard, d.addrs, expected, 30*time.Second)
	actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := bank.Audit(actx, d.addrs, expected)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	fmt.Fprintln(d.out, "\n=== Decree bank demo: report ===")
	fmt.Fprintln(d.out, formatSummary(final))
	switch {
	case fo == nil:
		fmt.Fprintln(d.out, "  leader failover       not tried (--kill-leader=false)")
	case fo.err != nil:
		fmt.Fprintf(d.out, "  leader failover       FAILED: %v\n", fo.err)
	default:
		fmt.Fprintf(d.out, "  leader failover       killed node %d at %.1fs; node %d led after %v\n",
			fo.killed, fo.at.Seconds(), fo.next, fo.took.Round(time.Millisecond))
	}
	fmt.Fprintln(d.out, rep.String())
	if auditErr != nil || !rep.OK {
		return errors.New("the audit found problems")
	}
	if fo != nil && fo.err != nil {
		return fmt.Errorf("leader failover: %w", fo.err)
	}
	if final.Committed == 0 {
		return errors.New("no transfer committed")
	}
	return nil
}

func (d *demoRun) close() {
	for _, g := range d.grpcs {
		g.Stop()
	}
	for _, b := range d.banks {
		b.Close()
	}
	if d.cl != nil {
		d.cl.Close()
	}
	if d.coords != nil {
		d.coords.stopAll()
	}
	if d.f.keep {
		fmt.Fprintf(d.out, "kept %s\n", d.dir)
		return
	}
	os.RemoveAll(d.dir)
}
