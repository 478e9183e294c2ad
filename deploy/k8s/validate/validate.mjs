// Validates custom resources against the schemas of their operators' CRDs, offline: the
// generated validators of @kubernetes-models (npm) for KEDA, Strimzi and the Prometheus
// operator. Reads a JSON array of objects on stdin; prints one JSON report per object and
// exits 1 if any is invalid or of a kind it has no schema for.
import { readFileSync } from "node:fs";

const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
  "kafka.strimzi.io/v1/KafkaTopic":
    "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1/KafkaTopic",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const object of objects) {
  const key = `${object.apiVersion}/${object.kind}`;
  const report = { kind: key, name: object.metadata?.name, valid: false, errors: [] };
  const module = MODELS[key];
  if (!module) {
    report.errors.push("no schema for this kind");
  } else {
    const exported = await import(module);
    const Model = exported[object.kind];
    try {
      new Model(object).validate();
      report.valid = true;
    } catch (error) {
      report.errors = (error.errors ?? [error]).map((e) =>
        e.instancePath !== undefined ? `${e.instancePath} ${e.message}` : String(e),
      );
    }
  }
  failed ||= !report.valid;
  console.log(JSON.stringify(report));
}
process.exit(failed ? 1 : 0);
