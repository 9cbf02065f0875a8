package bench

import (
	"os"
	"strconv"
	"syscall"
)

// ipBindAddressNoPort is Linux's IP_BIND_ADDRESS_NO_PORT: with a source
// address bound, the local port is chosen at connect time, per destination,
// instead of at bind time, so one source address serves more connections.
const ipBindAddressNoPort = 24

// bindNoPort is a net.Dialer Control function setting ipBindAddressNoPort.
func bindNoPort(network, address string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	// An old kernel without the option still works, with fewer ports.
	_ = serr
	return nil
}

// raiseNoFile raises the soft open-file limit to the hard limit and returns
// the new soft limit.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return rl.Cur, err
		}
	}
	return rl.Cur, nil
}

// cpuUsage is a process's CPU time and peak memory.
type cpuUsage struct {
	UserS  float64 `json:"user_s"`
	SysS   float64 `json:"sys_s"`
	MaxRSS int64   `json:"max_rss_bytes"`
}

// selfUsage reads the calling process's usage with getrusage(2).
func selfUsage() cpuUsage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return cpuUsage{}
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return cpuUsage{UserS: tv(ru.Utime), SysS: tv(ru.Stime), MaxRSS: ru.Maxrss * 1024}
}

// openFDs counts the open descriptors of process pid, -1 when unreadable.
func openFDs(pid int) int {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return -1
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return -1
	}
	return len(names)
}
