// Package cgroupv2 finds the cgroup v2 (unified) hierarchy, which eBPF cgroup
// programs attach to. Hosts mount it at /sys/fs/cgroup or, in hybrid setups,
// at /sys/fs/cgroup/unified, so it is looked up at run time.
package cgroupv2

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrNotMounted means no cgroup2 file system is mounted.
var ErrNotMounted = errors.New("no cgroup2 file system is mounted")

// Root returns the mount point of the cgroup v2 hierarchy.
func Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: id parent major:minor root mountpoint options ... - fstype source superopts
		fields := strings.Fields(s.Text())
		for i, field := range fields {
			if field == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return "", ErrNotMounted
}
