package sts

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func scopesFields(s string) []string { return strings.Fields(s) }

// writeJSONNoStore writes v with the headers already set by the caller.
func writeJSONNoStore(w http.ResponseWriter, v any) {
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(v)
}
