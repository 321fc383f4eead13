package coordinator_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/participant"
	"github.com/decree-tx/decree/txlog"
)

// The code between the README markers below appears verbatim in README.md;
// TestReadmeSnippets keeps the two in step and TestReadmeExample runs it.

// README:participant:begin
// Stock is a participant: Prepare reserves an item, Commit sells it,
// Abort puts it back. Its writes are durable together with the vote.
type Stock struct{}

func (Stock) Prepare(_ context.Context, txn participant.Txn, w participant.Writer) (participant.Vote, string, error) {
	item := []byte("item/" + string(txn.Payload))
	if _, taken, err := w.Get(item); err != nil || taken {
		return participant.VoteNo, "out of stock", err
	}
	w.Set(item, []byte(txn.ID))
	w.Set([]byte("txn/"+txn.ID), txn.Payload)
	return participant.VoteYes, "", nil
}

func (Stock) Commit(_ context.Context, id string, w participant.Writer) error {
	w.Delete([]byte("txn/" + id)) // the reservation is now a sale
	return nil
}

func (Stock) Abort(_ context.Context, id string, w participant.Writer) error {
	item, ok, err := w.Get([]byte("txn/" + id))
	if ok {
		w.Delete([]byte("item/" + string(item)))
		w.Delete([]byte("txn/" + id))
	}
	return err
}

func serveStock(ctx context.Context, dir string, coordinators []string, lis net.Listener) error {
	log, err := txlog.OpenParticipantLog(dir, txlog.Options{})
	if err != nil {
		return err
	}
	defer log.Close()
	p, err := participant.New(Stock{}, participant.Options{Log: log, Coordinators: coordinators})
	if err != nil {
		return err
	}
	defer p.Stop()
	srv := grpc.NewServer()
	p.Register(srv)
	p.Start(ctx)
	// When ctx ends the SDK ends its Calls streams, so GracefulStop
	// returns once the calls in flight are answered.
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	return srv.Serve(lis)
}

// README:participant:end

// README:client:begin
// sell reserves a lamp at the shop and at the warehouse: both or neither.
func sell(ctx context.Context, coordinators []string, shop, warehouse string) (client.Result, error) {
	c, err := client.Dial(coordinators, client.Options{})
	if err != nil {
		return client.Result{}, err
	}
	defer c.Close()
	return c.Commit(ctx, client.Txn{Branches: []client.Branch{
		{Participant: shop, Payload: []byte("lamp")},
		{Participant: warehouse, Payload: []byte("lamp")},
	}})
}

// README:client:end

func TestReadmeExample(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	c.leader()
	var coords []string
	for id := uint64(1); id <= 3; id++ {
		coords = append(coords, c.peers[id])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var addrs []string
	served := make(chan error, 2)
	for range 2 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, lis.Addr().String())
		go func() { served <- serveStock(ctx, t.TempDir(), coords, lis) }()
	}
	first, err := sell(ctx, coords, addrs[0], addrs[1])
	if err != nil || first.State != client.StateCommitted {
		t.Fatalf("first sale: %+v %v", first, err)
	}
	second, err := sell(ctx, coords, addrs[0], addrs[1])
	if err != nil || second.State != client.StateAborted || !strings.Contains(second.Reason, "out of stock") {
		t.Fatalf("second sale of the only lamp: %+v %v", second, err)
	}
	cancel()
	for range 2 {
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("serveStock did not return after its context ended: GracefulStop waits for the Calls streams")
		}
	}
}

func TestReadmeSnippets(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"participant", "client"} {
		begin, end := "// README:"+name+":begin\n", "// README:"+name+":end"
		_, rest, _ := strings.Cut(string(src), begin)
		snippet, _, ok := strings.Cut(rest, end)
		if !ok || strings.TrimSpace(snippet) == "" {
			t.Fatalf("no %s snippet in readme_test.go", name)
		}
		if !strings.Contains(string(readme), strings.TrimSpace(snippet)) {
			t.Errorf("README.md does not contain the %s snippet of coordinator/readme_test.go verbatim:\n%s", name, snippet)
		}
	}
}
