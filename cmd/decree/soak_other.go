//go:build !linux

package main

import "syscall"

// childProcAttr puts a node in its own process group, so that a Ctrl-C at
// the terminal reaches only the soak, which then stops the nodes in order.
func childProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
