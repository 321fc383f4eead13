// Package bank is Decree's bank-transfer example: bank participants that
// hold accounts, transfers that move money between them (at one bank or
// across banks) as two-phase-commit transactions, and an auditor that
// checks no money was created or lost.
//
// A Bank is a participant.Resource. Its accounts live in the participant
// log's user keyspace, so a transfer's reservation commits in the same
// synced batch as the SDK's YES record, and its effect in the same batch as
// the outcome record:
//
//	acct/<account>     balance, 8 bytes big-endian
//	lock/<account>     id of the transaction holding the account
//	pending/<txn id>   the transaction's legs (EncodeLegs)
//	released/<account> id of the last transaction that released the account
//
// Prepare reserves every account of its legs (debits and credits) or votes
// NO at once with one of the Reason constants: it never waits, so
// transfers cannot deadlock. Commit applies the deltas and releases the
// accounts; Abort only releases them. Balances never go negative.
//
// A Server bundles a Bank, its participant SDK and the decree.bank.v1.Bank
// audit service; Audit and AwaitQuiet read every bank through that service.
package bank
