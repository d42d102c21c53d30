package keys

import (
	"slices"
	"strings"
	"time"

	"postern.dev/postern/internal/store"
)

// view is what the stored records mean at one instant. It is computed by
// classify, a pure function, so every replica reading the same records at
// the same time sees the same keys.
type view struct {
	current *store.SigningKey // signs now; nil if no key may
	next    *store.SigningKey // activates next; nil if none
	extra   []store.SigningKey
	retired []retired // stopped signing, still published
	expired []store.SigningKey
}

// retired is a key that no longer signs, with when it stopped and when it
// leaves the key set.
type retired struct {
	rec      store.SigningKey
	retireAt time.Time
	expireAt time.Time
}

// classify sorts records into current, next, surplus future keys (extra),
// retired and expired at now. retention is how long a retired key stays
// published after it stopped signing.
//
// Rules: a record whose ExpireAt is set and not after now is expired. The
// current key is, among records with ActivateAt <= now that are not retired
// (RetireAt zero or after now), the one with the latest ActivateAt, ties going
// to the smaller ID. The next key is the future record with the earliest
// ActivateAt, ties to the smaller ID, so that the next key becomes the current
// key when its time comes; other future records are extra. Every other past
// record is retired: at its RetireAt if set, else (conservatively late) at the
// current key's activation, and it expires at its ExpireAt if set, else
// retention after it retired.
func classify(recs []store.SigningKey, now time.Time, retention time.Duration) view {
	var v view
	var past, future []store.SigningKey
	for _, r := range recs {
		switch {
		case !r.ExpireAt.IsZero() && !now.Before(r.ExpireAt):
			v.expired = append(v.expired, r)
		case r.ActivateAt.After(now):
			future = append(future, r)
		default:
			past = append(past, r)
		}
	}
	cur := -1
	for i, r := range past {
		if !r.RetireAt.IsZero() && !now.Before(r.RetireAt) {
			continue
		}
		if cur < 0 || r.ActivateAt.After(past[cur].ActivateAt) ||
			(r.ActivateAt.Equal(past[cur].ActivateAt) && r.ID < past[cur].ID) {
			cur = i
		}
	}
	if cur >= 0 {
		c := past[cur]
		v.current = &c
	}
	for i, r := range past {
		if i == cur {
			continue
		}
		rt := retired{rec: r, retireAt: r.RetireAt, expireAt: r.ExpireAt}
		if rt.retireAt.IsZero() {
			rt.retireAt = now
			if v.current != nil {
				rt.retireAt = v.current.ActivateAt
			}
		}
		if rt.expireAt.IsZero() {
			rt.expireAt = rt.retireAt.Add(retention)
		}
		if !now.Before(rt.expireAt) {
			v.expired = append(v.expired, r)
			continue
		}
		v.retired = append(v.retired, rt)
	}
	slices.SortFunc(future, func(a, b store.SigningKey) int {
		if c := a.ActivateAt.Compare(b.ActivateAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if len(future) > 0 {
		v.next = &future[0]
		v.extra = future[1:]
	}
	slices.SortFunc(v.retired, func(a, b retired) int {
		if c := b.rec.ActivateAt.Compare(a.rec.ActivateAt); c != 0 {
			return c
		}
		return strings.Compare(a.rec.ID, b.rec.ID)
	})
	return v
}

// nextEvent is the earliest time after which classify would answer
// differently (a key activates or expires), or the zero time.
func (v view) nextEvent() time.Time {
	var t time.Time
	consider := func(u time.Time) {
		if !u.IsZero() && (t.IsZero() || u.Before(t)) {
			t = u
		}
	}
	if v.next != nil {
		consider(v.next.ActivateAt)
	}
	if v.current != nil {
		consider(v.current.RetireAt)
		consider(v.current.ExpireAt)
	}
	for _, r := range v.retired {
		consider(r.expireAt)
	}
	return t
}
