//go:build tools

// The tool this module builds; `go build github.com/Shopify/toxiproxy/v2/cmd/server`.
package tools

import _ "github.com/Shopify/toxiproxy/v2/cmd/server"
