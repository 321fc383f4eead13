package bank

import "bytes"

// reservations is the bank's in-memory table of reserved accounts. Its
// owner (Bank) guards it with a mutex.
//
// Why it exists: the SDK runs the steps of different transactions
// concurrently and commits the Writer's batch only after Prepare, Commit or
// Abort has returned. The durable lock/ keys alone cannot stop two
// concurrent Prepares on one account: both would read it unlocked from the
// committed state and both vote YES. So Prepare checks and fills this table
// under the mutex before it returns YES; a second Prepare on the account
// then sees the reservation, whether or not the first one's batch has
// reached the disk yet, and votes NO (account busy).
//
// Releasing needs the same care in the other direction. Commit and Abort
// write the new balances and delete the locks in a batch that commits after
// they return, so the table must not forget the reservation in Commit:
// a Prepare that took the account at once would read the old balance (and
// could overdraw it), and its lock, committed before the release batch,
// would be deleted by it. Commit and Abort therefore only mark the entry
// released and, in their batch, write released/<account> = txn id. The
// entry is dropped by the next Prepare that finds that marker in the
// committed state: then the release, the new balance and the deleted lock
// are on disk (one atomic batch), and reading the account is safe. Until
// then the account is busy. This also covers a one-phase commit, whose
// Prepare and Commit share a batch that never shows the lock on disk.
//
// At startup the table is rebuilt from the lock/ keys: every reservation
// of a prepared transaction is on disk with its YES record.
//
// A batch that fails to commit (a broken disk), or a one-phase Commit that
// fails (the SDK then records NO), may leave an entry behind, which makes
// the account busy until the process restarts; never is an account taken
// twice.
type reservations map[string]reservation

// reservation is an account's holder, and whether the holder's Commit or
// Abort has released it (durably or not yet).
type reservation struct {
	txn      string
	released bool
}

// free reports whether txn may reserve account, dropping a release that
// has become durable.
func (t reservations) free(account, txn string, g getter) (bool, error) {
	r, ok := t[account]
	switch {
	case !ok || r.txn == txn:
		return true, nil
	case !r.released:
		return false, nil
	}
	marker, found, err := g.Get(releasedKey(account))
	if err != nil {
		return false, wrapErr(err, "read release of %q", account)
	}
	if !found || !bytes.Equal(marker, []byte(r.txn)) {
		return false, nil // the release is not on disk yet
	}
	delete(t, account)
	return true, nil
}

// reserve records that txn holds account.
func (t reservations) reserve(account, txn string) {
	t[account] = reservation{txn: txn}
}

// release marks txn's reservation of account released.
func (t reservations) release(account, txn string) {
	if r, ok := t[account]; ok && r.txn == txn {
		t[account] = reservation{txn: txn, released: true}
	}
}
