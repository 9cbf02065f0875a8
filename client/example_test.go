package client_test

import (
	"context"
	"fmt"
	"log"

	"tether/bus"
	"tether/client"
	"tether/server"
)

func Example() {
	// A node to talk to; in real life it runs elsewhere.
	b := bus.NewLocal(bus.Config{})
	defer b.Close()
	srv, err := server.New(server.Config{Listen: "127.0.0.1:0", AllowClientPublish: true}, b, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown(context.Background())

	ctx := context.Background()
	c, err := client.Dial(ctx, "ws://"+srv.Addr().String()+"/ws", client.Options{
		OnEvent: func(ev client.Event) {
			if ev.Type == client.EventResyncNeeded {
				log.Printf("refetch %s: messages were lost", ev.Channel)
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	got := make(chan client.Message, 1)
	if _, err := c.Subscribe("scores.m1", func(m client.Message) { got <- m }); err != nil {
		log.Fatal(err)
	}
	offset, err := c.Publish(ctx, "scores.m1", map[string]string{"score": "1-0"})
	if err != nil {
		log.Fatal(err)
	}
	m := <-got
	fmt.Println(offset, m.Channel, m.Offset, string(m.Data))
	// Output: 1 scores.m1 1 {"score":"1-0"}
}
