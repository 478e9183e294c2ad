// The GraphQL edge: GraphQL Mesh composes one supergraph from the four services' gRPC
// reflection (no hand-written resolvers), and the Hive Gateway serves it (gateway.mjs).
//
//   PIXSIM_JOB_ADDRESS=127.0.0.1:50051 ... npx mesh-compose -c graphql/mesh.config.ts -o supergraph.graphql
//
// Reflection is read from the addresses in the environment when composing; the supergraph
// keeps them as `{env.…}` templates, so the gateway dials whatever its own environment says.
// See docs/edges.md for the naming rules below.
import { createRenameTransform, defineConfig } from '@graphql-mesh/compose-cli';
import { loadGrpcSubgraph } from '@omnigraph/grpc';

const SERVICES = [
  { subgraph: 'Jobs', address: 'PIXSIM_JOB_ADDRESS' },
  { subgraph: 'Assets', address: 'PIXSIM_ASSET_ADDRESS' },
  { subgraph: 'Providers', address: 'PIXSIM_PROVIDER_GATEWAY_ADDRESS' },
  { subgraph: 'Scenes', address: 'PIXSIM_SCENE_ADDRESS' },
];

const ROOT_TYPES = new Set(['Query', 'Mutation', 'Subscription']);

// `pixsim_job_v1_JobService_CreateJob` -> `createJob`: a method's name is unique across the
// services (AIP-190 names say their resource), so the package and service add nothing.
function rootFieldName({ typeName, fieldName }: { typeName: string; fieldName: string }) {
  const match = /^pixsim_\w+?_v1_(\w+Service)_(\w+)$/.exec(fieldName);
  if (!ROOT_TYPES.has(typeName) || !match) return fieldName;
  const [, service, method] = match;
  const name = method === 'connectivityState' ? `${service}ConnectivityState` : method;
  return name[0].toLowerCase() + name.slice(1);
}

// `pixsim__job__v1__Job` -> `Job`, `pixsim__job__v1__Job_State` -> `Job_State`.
function typeName({ typeName }: { typeName: string }) {
  return typeName.replace(/^pixsim__\w+?__v1__/, '');
}

export const composeConfig = defineConfig({
  subgraphs: SERVICES.map(({ subgraph, address }) => ({
    sourceHandler: loadGrpcSubgraph(subgraph, {
      endpoint: `{env.${address}}`,
      // Reads are queries; a watch is a subscription; everything else changes something.
      prefixQueryMethod: ['get', 'list', 'batchget', 'validate', 'read', 'download', 'export', 'estimate'],
      selectQueryOrMutationField: [{ fieldName: '*_WatchJob', type: 'Subscription' }],
      // The caller's token is passed on; the services verify it.
      metaData: { authorization: '{context.headers.authorization}' },
    }),
    transforms: [createRenameTransform({ fieldRenamer: rootFieldName, typeRenamer: typeName })],
  })),
});
