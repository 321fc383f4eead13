package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/decree-tx/decree/coordinator/client"
)

// A transfer between two banks: both branches commit, or neither does.
func ExampleClient_Commit() {
	c, err := client.Dial([]string{"10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"}, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Commit(ctx, client.Txn{Branches: []client.Branch{
		{Participant: "bank-a:7100", Payload: []byte(`{"account":"alice","delta":-100}`)},
		{Participant: "bank-b:7100", Payload: []byte(`{"account":"bob","delta":100}`)},
	}})
	if err != nil { // a bad request, or client.ErrOutcomeUnknown past the deadline
		log.Fatalf("transfer %s: %v", res.ID, err)
	}
	fmt.Println(res.ID, res.State, res.Reason) // committed, or aborted with the reason
}
