package main

import "syscall"

// childProcAttr puts a node in its own process group, so that a Ctrl-C at
// the terminal reaches only the soak (which then stops the nodes in
// order), and has the kernel kill it if the soak process dies first.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
