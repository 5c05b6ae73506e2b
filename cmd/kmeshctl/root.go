package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
)

// defaultAdminAddress is where kmeshd serves its admin API unless told
// otherwise (kmeshd --admin-address).
const defaultAdminAddress = "127.0.0.1:15000"

// defaultAdminSocket is where the kmeshd of this host serves its control
// socket when its --node is the host name, as by default.
func defaultAdminSocket() string {
	h, _ := os.Hostname()
	return filepath.Join("/run/kmesh", h, "admin.sock")
}

// options are what tests change.
type options struct {
	now func() time.Time // for ages; time.Now if nil
}

// app is the state the commands share.
type app struct {
	opts    options
	address string
	socket  string
	timeout time.Duration
}

// client reads from kmeshd's admin address.
func (a *app) client() *client { return newClient(a.address, a.timeout) }

// controlClient changes kmeshd through its control socket: kmeshd refuses
// changes on its admin address.
func (a *app) controlClient() *client { return newSocketClient(a.socket, a.timeout) }

func (a *app) now() time.Time {
	if a.opts.now != nil {
		return a.opts.now()
	}
	return time.Now()
}

func newRootCommand(opts options) *cobra.Command {
	a := &app{opts: opts}
	root := &cobra.Command{
		Use:   "kmeshctl",
		Short: "Kmesh control interface",
		Long: `Kmesh command line utility to inspect and debug a node's kmeshd: the services,
workloads, policies and connections it holds, its BPF maps, and why a
connection goes where it goes.

kmeshctl talks to nothing but kmeshd's admin API. Reads go to 127.0.0.1:15000
of the node (--admin-address reaches another one); changes (enroll, unenroll,
log --level, accesslog on|off) go to kmeshd's admin socket,
/run/kmesh/<node>/admin.sock (--admin-socket), which only root may use.`,
		Example: `  # Is the local kmeshd ready, and what does it hold?
  kmeshctl status

  # List the services of the mesh as kmeshd sees them
  kmeshctl get services

  # Why does a connection from client to 10.96.0.10:80 go where it goes?
  kmeshctl explain client 10.96.0.10:80

  # Ask the kmeshd of another node
  kmeshctl get workloads --admin-address 192.168.1.12:15000`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.address, "admin-address", defaultAdminAddress, "address of kmeshd's admin API (host:port)")
	root.PersistentFlags().StringVar(&a.socket, "admin-socket", defaultAdminSocket(), "kmeshd's admin socket, for changes (kmeshd --admin-socket; root only)")
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 10*time.Second, "how long to wait for kmeshd's answer")
	root.AddCommand(
		newStatusCommand(a),
		newGetCommand(a),
		newDumpCommand(a),
		newLogCommand(a),
		newAccessLogCommand(a),
		newExplainCommand(a),
		newWaypointCommand(a),
		newEnrollCommand(a, true),
		newEnrollCommand(a, false),
		newVersionCommand(a),
	)
	return root
}
