package demo

import (
	"context"
	"io"
	"net/http"
)

// edge is the gateway as the demo uses it: what alice's requests enter.
type edge interface {
	// Run serves until ctx is done.
	Run(ctx context.Context) error
	// Close releases what Run left.
	Close()
	// Ready reports whether the edge holds its SVID and the STS keys.
	Ready() bool
	// NewRequest returns a user's request for path.
	NewRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error)
	// Client returns the HTTP client users reach the edge with.
	Client() *http.Client
	// URL is the edge's base URL, for the curl commands.
	URL() string
}
