// Package proto is tether's protocol vocabulary, shared by the server, the
// Go client and the load tool: op names, error codes, close codes with their
// meaning, and the channel-name rule. docs/protocol.md is the prose for the
// same facts; a test checks that its close-code table mirrors this package.
//
// It knows nothing of sockets or JSON encoding; it imports only the standard
// library and internal/wsframe, the WebSocket codec, whose RFC 6455 close
// codes it names again beside tether's own.
//
// Where to find:
//
//	| what                                  | file       |
//	|---------------------------------------|------------|
//	| op names (OpSubscribe …)              | proto.go   |
//	| error codes (CodeBadRequest …)        | proto.go   |
//	| close codes and their table (Closes)  | close.go   |
//	| the channel-name rule (ValidChannel)  | channel.go |
//
// To add a close code: add the constant and its row in close.go; when the
// server sends it, add the row to docs/protocol.md ("Close codes") too.
package proto
