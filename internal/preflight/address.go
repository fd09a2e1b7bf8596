package preflight

import (
	"net/netip"
)

// refusedPrefixes are ranges a caller's domain must never make us dial,
// beyond what netip's predicates cover: this network, carrier-grade NAT,
// IETF protocol assignments, documentation and benchmarking ranges, and
// the reserved block (with broadcast).
var refusedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("2001:db8::/32"),
	netip.MustParsePrefix("fec0::/10"), // site-local, deprecated but routable in old networks
	netip.MustParsePrefix("100::/64"),  // discard-only
}

// Translated IPv6 ranges carry an IPv4 address inside: they are refused
// when the address inside is.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Refused reports whether an address is one the checker never connects
// to: loopback, private, link-local, multicast, unspecified, or another
// range that is not the public internet.
func Refused(a netip.Addr) bool {
	a = a.Unmap()
	switch {
	case !a.IsValid(), a.IsLoopback(), a.IsPrivate(), a.IsUnspecified(),
		a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.IsMulticast():
		return true
	}
	for _, p := range refusedPrefixes {
		if p.Contains(a) {
			return true
		}
	}
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			return Refused(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(a):
			return Refused(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	return false
}
