package coordinator

// WaitFor polls a condition with a deadline, for the external tests.
var WaitFor = waitFor
