package console

import (
	"encoding/csv"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/wxdomain/wxdomain/tasks"
)

// inventory is every domain of the platforms' last known lists.
type inventory struct {
	Domains []*domainRow
	// Platforms counts the configured platforms; Known those whose lists
	// are known, Unknown the others' appids; Unreleased those known
	// without a published list.
	Platforms, Known, Unreleased int
	Unknown                      []string
	// OldestRead is the oldest read of the lists shown.
	OldestRead moment
	// known and released are the platforms with known lists, and those of
	// them with a published list, in the platforms' order.
	known, released []string
}

// domainRow is one domain: the platforms that have it in testing and in
// published, and those where the two differ.
type domainRow struct {
	Domain    string
	Testing   []string
	Published []string
	// OnlyTesting and OnlyPublished are the released platforms where the
	// domain is in one list and not in the other (drift).
	OnlyTesting, OnlyPublished []string
	// on is every platform that has the domain, in the platforms' order.
	on []presence
}

// presence is a domain on one platform.
type presence struct {
	appid              string
	testing, published bool
}

// Drift reports whether testing and published differ on some platform.
func (d *domainRow) Drift() bool { return len(d.OnlyTesting)+len(d.OnlyPublished) > 0 }

// buildInventory indexes the lists by domain, platforms in the given
// order, domains sorted. A platform never released (no published list) is
// no drift: it has no published configuration to differ from.
func buildInventory(appids []string, lists map[string]tasks.PlatformLists) (inv inventory, oldest time.Time) {
	inv.Platforms = len(appids)
	byDomain := map[string]*domainRow{}
	row := func(d string) *domainRow {
		r := byDomain[d]
		if r == nil {
			r = &domainRow{Domain: d}
			byDomain[d] = r
		}
		return r
	}
	for _, a := range appids {
		l, ok := lists[a]
		if !ok {
			inv.Unknown = append(inv.Unknown, a)
			continue
		}
		inv.Known++
		inv.known = append(inv.known, a)
		if oldest.IsZero() || l.ReadAt.Before(oldest) {
			oldest = l.ReadAt
		}
		testing := make(map[string]bool, len(l.Testing))
		for _, d := range l.Testing {
			if testing[d] {
				continue
			}
			testing[d] = true
			r := row(d)
			r.Testing = append(r.Testing, a)
			r.on = append(r.on, presence{appid: a, testing: true})
		}
		if l.Published == nil {
			inv.Unreleased++
			continue
		}
		inv.released = append(inv.released, a)
		published := make(map[string]bool, len(*l.Published))
		for _, d := range *l.Published {
			if published[d] {
				continue
			}
			published[d] = true
			r := row(d)
			r.Published = append(r.Published, a)
			if !testing[d] {
				r.OnlyPublished = append(r.OnlyPublished, a)
				r.on = append(r.on, presence{appid: a, published: true})
			} else {
				r.on[len(r.on)-1].published = true // this platform's, added above
			}
		}
		for d := range testing {
			if !published[d] {
				r := row(d)
				r.OnlyTesting = append(r.OnlyTesting, a)
			}
		}
	}
	inv.Domains = make([]*domainRow, 0, len(byDomain))
	for _, r := range byDomain {
		inv.Domains = append(inv.Domains, r)
	}
	sort.Slice(inv.Domains, func(i, j int) bool { return inv.Domains[i].Domain < inv.Domains[j].Domain })
	return inv, oldest
}

// inventoryView is the inventory page.
type inventoryView struct {
	inventory
	// Rows are the domains shown (all, or those with drift).
	Rows          []inventoryRow
	DriftOnly     bool
	DriftCount    int
	CanRefreshAll bool
}

// inventoryRow is a domain as the page shows it.
type inventoryRow struct {
	Domain                     string
	Testing, Published         platformSet
	OnlyTesting, OnlyPublished platformSet
	Drift                      bool
}

// platformSet is the platforms that have a domain, out of those that
// could (Of; 0 when that does not matter). A domain on most platforms is
// shown by the few that lack it: Missing is set when All is not and N is
// more than half of Of, else List.
type platformSet struct {
	N, Of         int
	All           bool
	List, Missing []string
}

// setOf describes have out of among (the platforms' order).
func setOf(have, among []string) platformSet {
	s := platformSet{N: len(have), Of: len(among)}
	switch {
	case s.Of > 0 && s.N == s.Of:
		s.All = true
	case s.Of > 0 && s.N > s.Of/2:
		in := make(map[string]struct{}, len(have))
		for _, a := range have {
			in[a] = struct{}{}
		}
		for _, a := range among {
			if _, ok := in[a]; !ok {
				s.Missing = append(s.Missing, a)
			}
		}
	default:
		s.List = have
	}
	return s
}

func (inv *inventory) rowOf(d *domainRow) inventoryRow {
	return inventoryRow{
		Domain: d.Domain, Drift: d.Drift(),
		Testing: setOf(d.Testing, inv.known), Published: setOf(d.Published, inv.released),
		OnlyTesting: setOf(d.OnlyTesting, nil), OnlyPublished: setOf(d.OnlyPublished, nil),
	}
}

// readInventory reads the platforms and their last known lists.
func (c *Console) readInventory(r *http.Request) (inventory, map[string]tasks.PlatformLists, error) {
	list, err := c.fleet(r.Context())
	if err != nil {
		return inventory{}, nil, err
	}
	appids := make([]string, len(list))
	for i, p := range list {
		appids[i] = p.AppID
	}
	lists, err := c.fleetLists(r.Context(), appids)
	if err != nil {
		return inventory{}, nil, err
	}
	inv, oldest := buildInventory(appids, lists)
	inv.OldestRead = c.momentOf(oldest)
	return inv, lists, nil
}

func (c *Console) inventoryPage(w http.ResponseWriter, r *http.Request) {
	inv, _, err := c.readInventory(r)
	if err != nil {
		c.opFailed(w, r, err)
		return
	}
	v := inventoryView{inventory: inv, DriftOnly: r.URL.Query().Get("drift") == "1", CanRefreshAll: c.cfg.Rollouts != nil}
	for _, d := range inv.Domains {
		if d.Drift() {
			v.DriftCount++
		}
	}
	v.Rows = make([]inventoryRow, 0, len(inv.Domains))
	for _, d := range inv.Domains {
		if !v.DriftOnly || d.Drift() {
			v.Rows = append(v.Rows, inv.rowOf(d))
		}
	}
	c.render(w, http.StatusOK, "inventory.html", page{Title: "Domains", Nav: "inventory", Data: v})
}

// inventoryCSV answers the inventory as CSV, one row per domain and
// platform that has it in either list: domain, platform, in_testing,
// in_published (empty for a platform never released), read_at. With
// ?drift=1, only the rows where the two lists differ.
func (c *Console) inventoryCSV(w http.ResponseWriter, r *http.Request) {
	inv, lists, err := c.readInventory(r)
	if err != nil {
		c.opFailed(w, r, err)
		return
	}
	driftOnly := r.URL.Query().Get("drift") == "1"
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="wxdomain-domains-`+c.cfg.Now().UTC().Format("20060102T150405Z")+`.csv"`)
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"domain", "platform", "in_testing", "in_published", "read_at"})
	yes := func(b bool) string {
		if b {
			return "true"
		}
		return "false"
	}
	for _, d := range inv.Domains {
		domain := csvSafe(d.Domain)
		for _, p := range d.on {
			l := lists[p.appid]
			published := ""
			if l.Published != nil {
				published = yes(p.published)
			} else if driftOnly {
				continue // never released: nothing to differ from
			}
			if driftOnly && p.testing == p.published {
				continue
			}
			_ = cw.Write([]string{domain, p.appid, yes(p.testing), published, l.ReadAt.UTC().Format(time.RFC3339)})
		}
	}
	cw.Flush()
}

// csvSafe keeps a value from outside (a domain as WeChat reported it)
// from being read as a formula by a spreadsheet.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
