// Package participant is Decree's participant SDK: it turns a user Resource
// into a two-phase-commit participant served over gRPC
// (decree.v1.Participant).
//
// The SDK keeps a durable record of every transaction it takes part in, in a
// txlog.ParticipantLog that also holds the resource's own data. Whatever the
// resource writes through the Writer it is handed commits in the same synced
// batch as the SDK's record of the vote or outcome, so a YES vote and the
// locks or reservations it depends on reach the disk together, before the
// vote is sent, and an outcome is durable before it is acknowledged.
//
// A participant that restarts with prepared transactions (voted YES, outcome
// unknown) lists them in InDoubt and, once Started, asks the coordinator
// cluster for their outcome until it learns it. So does any prepared
// transaction that stays undecided longer than Options.InDoubtTimeout. The
// SDK never decides a prepared transaction on its own.
//
// Every call carries the Raft term of the coordinator leader that sent it;
// a call with a lower term than the transaction has already seen is refused
// (FailedPrecondition), which fences off deposed leaders.
//
// Usage:
//
//	log, err := txlog.OpenParticipantLog(dir, txlog.Options{Logger: logger})
//	...
//	p, err := participant.New(myResource, participant.Options{
//		Log:          log,
//		Coordinators: []string{"c1:7000", "c2:7000", "c3:7000"},
//		Logger:       logger,
//	})
//	p.Register(grpcServer)
//	p.Start(ctx)
//	... serve until ctx ends ...
//	grpcServer.GracefulStop() // the participant ends its Calls streams when ctx ends (or at Stop)
//	p.Stop()
//	log.Close()
package participant
