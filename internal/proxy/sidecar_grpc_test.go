package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestSidecarGRPCStreaming runs a gRPC server-streaming call (the health
// service's Watch) through two sidecars: the client speaks cleartext HTTP/2
// to the gateway's outbound listener, which exchanges the user's token and
// reaches order-processing's sidecar over mutual TLS, which forwards to the
// gRPC app. Messages arrive as they are sent and the trailers (grpc-status)
// come back intact.
func TestSidecarGRPCStreaming(t *testing.T) {
	srv := startServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	orders := startSidecar(t, srv, "order-processing", ln.Addr().String(), nil)
	gateway := startSidecar(t, srv, "gateway", serveApp(t, &recorder{}), map[string]string{"order-processing": orders.InboundAddr().String()})

	conn, err := grpc.NewClient(gateway.OutboundAddr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("order-processing"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+userToken(t, "alice", "orders:read orders:write"))

	resp, err := client.Check(authed, &healthpb.HealthCheckRequest{Service: "orders"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary Check: %v %v", resp, err)
	}
	// grpc-status in the trailers survives both sidecars.
	if _, err := client.Check(authed, &healthpb.HealthCheckRequest{Service: "unknown"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service: %v, want NotFound", err)
	}

	stream, err := client.Watch(authed, &healthpb.HealthCheckRequest{Service: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	want := []healthpb.HealthCheckResponse_ServingStatus{
		healthpb.HealthCheckResponse_SERVING,
		healthpb.HealthCheckResponse_NOT_SERVING,
		healthpb.HealthCheckResponse_SERVING,
	}
	for i, w := range want {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.Status != w {
			t.Fatalf("message %d: %v, want %v", i, m.Status, w)
		}
		// The next status is only set once this message has arrived: the
		// stream is not buffered anywhere on the way.
		if i+1 < len(want) {
			hs.SetServingStatus("orders", want[i+1])
		}
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("after cancel: %v", err)
	}

	// Without a token the inbound side refuses the call before the app.
	direct, err := grpc.NewClient(gateway.OutboundAddr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("order-processing"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if _, err := healthpb.NewHealthClient(direct).Check(ctx2, &healthpb.HealthCheckRequest{Service: "orders"}); err == nil {
		t.Error("a call without a user context reached the app")
	}
}
