package peercred

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Unknown is the gid (and, as -1, the pid) of a peer the kernel names by
// uid alone: no policy names it.
const Unknown = ^uint32(0)

// ErrNotLoopback refuses a TCP connection that does not come from this
// machine: the kernel knows no process for it.
var ErrNotLoopback = errors.New("peercred: not a loopback connection")

// ErrCallerClosed refuses a connection whose caller has closed its
// socket: no process holds it, so none can be named.
var ErrCallerClosed = errors.New("peercred: the caller's socket is closed (no process holds it)")

// Sizes and offsets of the inet_diag messages (linux/inet_diag.h).
const (
	nlmsgHdrLen      = 16
	inetDiagReqLen   = 56
	inetDiagMsgLen   = 72
	inetDiagStateOff = 1  // idiag_state in struct inet_diag_msg
	inetDiagUIDOff   = 64 // idiag_uid in struct inet_diag_msg
	inetDiagInodeOff = 68 // idiag_inode in struct inet_diag_msg
	tcpTimeWait      = 6  // TCP_TIME_WAIT
	sockIDOff        = 4  // struct inet_diag_sockid in both structs
	inetDiagAllStat  = 0xffffffff
	diagTimeout      = 2 * time.Second
)

// FromTCPConn names the local process at the other end of an accepted
// loopback TCP connection: the kernel's socket table (NETLINK_SOCK_DIAG,
// the exact socket whose source is conn's remote address and whose
// destination is conn's local one) gives the uid that owns the caller's
// socket. The pid and gid are not known this way: the Peer carries -1 and
// Unknown, which no policy names. A connection from another machine, one
// whose socket no process holds any more (the caller closed it: the
// kernel then keeps a time-wait socket, which it reports as uid 0), and
// anything the kernel does not answer plainly are refused.
func FromTCPConn(ctx context.Context, conn net.Conn) (Peer, error) {
	remote, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return Peer{}, fmt.Errorf("%w: remote address %q: %w", ErrNoCredentials, conn.RemoteAddr(), err)
	}
	local, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return Peer{}, fmt.Errorf("%w: local address %q: %w", ErrNoCredentials, conn.LocalAddr(), err)
	}
	if !remote.Addr().Unmap().IsLoopback() || !local.Addr().Unmap().IsLoopback() {
		return Peer{}, fmt.Errorf("%w: %s", ErrNotLoopback, remote)
	}
	// The caller's socket is of the family its addresses are written in:
	// an IPv4 socket for 127.0.0.1, an IPv6 one for ::1 and for mapped
	// IPv4 addresses (a dual-stack socket); try the other when unsure.
	var errs []error
	for _, fam := range families(remote.Addr()) {
		uid, err := socketOwner(ctx, fam, remote, local)
		if err == nil {
			return Peer{UID: uid, GID: Unknown, PID: -1}, nil
		}
		errs = append(errs, err)
	}
	return Peer{}, fmt.Errorf("%w: the kernel names no local socket for %s → %s: %w", ErrNoCredentials, remote, local, errors.Join(errs...))
}

// families are the socket families a caller at a may have.
func families(a netip.Addr) []uint8 {
	switch {
	case a.Is4():
		return []uint8{unix.AF_INET}
	case a.Is4In6():
		return []uint8{unix.AF_INET6, unix.AF_INET}
	}
	return []uint8{unix.AF_INET6}
}

// socketOwner asks the kernel for the TCP socket of family fam from src
// to dst and returns the uid that owns it.
func socketOwner(ctx context.Context, fam uint8, src, dst netip.AddrPort) (uint32, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	timeout := diagTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	tv := unix.NsecToTimeval(max(timeout, time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("netlink timeout: %w", err)
	}
	const seq = 1
	req := diagRequest(fam, src, dst, seq)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("netlink receive: %w", err)
	}
	return parseDiagReply(buf[:n], seq, req[nlmsgHdrLen+8:nlmsgHdrLen+8+36])
}

// diagRequest is a SOCK_DIAG_BY_FAMILY request for the one TCP socket of
// family fam from src to dst (struct nlmsghdr, struct inet_diag_req_v2).
func diagRequest(fam uint8, src, dst netip.AddrPort, seq uint32) []byte {
	b := make([]byte, nlmsgHdrLen+inetDiagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], seq)
	r := b[nlmsgHdrLen:]
	r[0], r[1] = fam, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], inetDiagAllStat)
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], src.Port())
	binary.BigEndian.PutUint16(id[2:], dst.Port())
	putAddr(id[4:20], fam, src.Addr())
	putAddr(id[20:36], fam, dst.Addr())
	// idiag_if 0; idiag_cookie INET_DIAG_NOCOOKIE.
	ne.PutUint32(id[40:], ^uint32(0))
	ne.PutUint32(id[44:], ^uint32(0))
	return b
}

// putAddr writes a in the 16 bytes of an inet_diag address of family fam.
func putAddr(dst []byte, fam uint8, a netip.Addr) {
	if fam == unix.AF_INET {
		v4 := a.Unmap().As4()
		copy(dst, v4[:])
		return
	}
	v6 := a.As16()
	copy(dst, v6[:])
}

// parseDiagReply reads the kernel's answer to request seq: one
// inet_diag_msg for the socket asked (ports and addresses as in want, the
// request's inet_diag_sockid up to its interface), whose uid it returns,
// or the kernel's error. A socket that no process holds (TIME_WAIT, or an
// orphan: inode 0) names nobody: the kernel reports uid 0 for the
// time-wait socket a caller leaves when it closes, so that a caller that
// wrote its request and closed would otherwise be taken for root.
func parseDiagReply(b []byte, seq uint32, want []byte) (uint32, error) {
	ne := binary.NativeEndian
	if len(b) < nlmsgHdrLen {
		return 0, fmt.Errorf("netlink: a reply of %d bytes", len(b))
	}
	l, typ, gotSeq := ne.Uint32(b[0:]), ne.Uint16(b[4:]), ne.Uint32(b[8:])
	if int(l) > len(b) || l < nlmsgHdrLen || gotSeq != seq {
		return 0, fmt.Errorf("netlink: a malformed reply (length %d of %d, seq %d)", l, len(b), gotSeq)
	}
	body := b[nlmsgHdrLen:l]
	switch typ {
	case unix.NLMSG_ERROR:
		if len(body) < 4 {
			return 0, errors.New("netlink: a short error")
		}
		if errno := -int32(ne.Uint32(body)); errno != 0 {
			return 0, fmt.Errorf("netlink: %w", unix.Errno(errno))
		}
		return 0, errors.New("netlink: an acknowledgement and no socket")
	case unix.SOCK_DIAG_BY_FAMILY:
		if len(body) < inetDiagMsgLen {
			return 0, fmt.Errorf("netlink: an inet_diag_msg of %d bytes", len(body))
		}
		if got := body[sockIDOff : sockIDOff+len(want)]; string(got) != string(want) {
			return 0, errors.New("netlink: the kernel answered for another socket")
		}
		if body[inetDiagStateOff] == tcpTimeWait || ne.Uint32(body[inetDiagInodeOff:]) == 0 {
			return 0, ErrCallerClosed
		}
		return ne.Uint32(body[inetDiagUIDOff:]), nil
	}
	return 0, fmt.Errorf("netlink: a reply of type %d", typ)
}
