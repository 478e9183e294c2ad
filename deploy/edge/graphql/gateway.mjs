// The Hive Gateway (its runtime, @graphql-hive/gateway-runtime) serving the supergraph that
// mesh.config.ts composes: queries and mutations over HTTP, subscriptions (WatchJob) as
// Server-Sent Events (GraphQL over SSE, `accept: text/event-stream`), at /graphql. Every service call goes out by gRPC
// with the caller's `authorization` header.
//
//   node graphql/gateway.mjs <supergraph.graphql> [port]     (PIXSIM_*_ADDRESS set)
import { createServer } from 'node:http';
import { createGatewayRuntime } from '@graphql-hive/gateway-runtime';

const [supergraph, port = '4000'] = process.argv.slice(2);
if (!supergraph) {
  console.error('usage: node gateway.mjs <supergraph.graphql> [port]');
  process.exit(2);
}

const gateway = createGatewayRuntime({
  supergraph,
  // Introspection and the GraphiQL page are for developers; an operator turns them off.
  graphiql: process.env.PIXSIM_GRAPHIQL !== 'false',
  maskedErrors: false, // the services' own messages and codes are meant for callers
});

const server = createServer(gateway);

server.listen(Number(port), process.env.PIXSIM_GRAPHQL_HOST ?? '127.0.0.1', () => {
  console.log(`graphql edge listening on ${port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => gateway.dispose().then(() => process.exit(0)));
  });
}
