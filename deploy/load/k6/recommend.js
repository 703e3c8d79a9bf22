// Load profiles for recsys.v1.Recommender/Recommend: image, product_id and history-only queries.
//
//   k6 run -e PROFILE=steady -e TARGET=localhost:50051 deploy/load/k6/recommend.js
//
// PROFILE: smoke (RATE 4 for 10 s), steady (RATE for DURATION, default 20/s for 5 min), ramp (up to
// RATE in 2 min, 3 min there, down in 1 min), spike (RATE, then SPIKE x RATE for a minute, then RATE).
// RATE is requests per second for all mixes together, split by MIX_IMAGE / MIX_PRODUCT / MIX_HISTORY
// (shares, default 0.5 / 0.3 / 0.2). Thresholds (ERROR_RATIO, P95_MS, P99_MS per mix) fail the run
// with exit code 99 when the service misses them. The request files in ../data are the ones the ghz
// configurations in ../ghz send; the users of the history mix get their views in setup().
//
// Security: plaintext by default. CACERT (a PEM file) makes it TLS that trusts that CA; CERT and KEY (PEM
// files) add a client certificate for mutual TLS. Give absolute paths: k6 resolves relative ones against
// this folder. RECSYS_TOKEN, best set in the environment rather than with -e, goes with every call,
// setup()'s included, as the metadata 'authorization: Bearer <token>'.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Rate } from 'k6/metrics';

const env = (name, fallback) => __ENV[name] || fallback;
const TARGET = env('TARGET', 'localhost:50051');
const PROFILE = env('PROFILE', 'steady');
const SMOKE = PROFILE === 'smoke';
const RATE = Number(env('RATE', SMOKE ? '4' : '20'));
const SPIKE = Number(env('SPIKE', '5'));
const DURATION = env('DURATION', SMOKE ? '10s' : '5m');
const ERROR_RATIO = Number(env('ERROR_RATIO', '0.01'));
const P95_MS = Number(env('P95_MS', '250'));
const P99_MS = Number(env('P99_MS', '500'));
const TIMEOUT = env('TIMEOUT', '5s');
const TOKEN = env('RECSYS_TOKEN', '');
const [CACERT, CERT, KEY] = [env('CACERT', ''), env('CERT', ''), env('KEY', '')];
if (!CERT !== !KEY) {
  throw new Error('CERT and KEY go together: the client certificate and its key, for mutual TLS');
}

const REQUESTS = {
  image: JSON.parse(open('../data/recommend-image.json')),
  product: JSON.parse(open('../data/recommend-product.json')),
  history: JSON.parse(open('../data/recommend-history.json')),
};
const VIEWS = JSON.parse(open('../data/record-views.json'));
const SHARES = {
  image: Number(env('MIX_IMAGE', '0.5')),
  product: Number(env('MIX_PRODUCT', '0.3')),
  history: Number(env('MIX_HISTORY', '0.2')),
};

const client = new grpc.Client();
client.load(['../../../protos'], 'recsys/v1/recsys.proto');

const failed = new Rate('recsys_failed_requests');

// Plaintext, or TLS with CACERT and/or a client certificate (files are read here, in the init context, as k6 wants).
const tls = { ...(CACERT && { cacerts: [open(CACERT)] }), ...(CERT && { cert: open(CERT), key: open(KEY) }) };
const CONNECT = { timeout: '10s', ...(CACERT || CERT ? { tls } : { plaintext: true }) };
const CALL = { timeout: TIMEOUT, metadata: TOKEN ? { authorization: `Bearer ${TOKEN}` } : {} };

function executor(share) {
  const rate = Math.max(1, Math.round(RATE * share));
  const arrival = { timeUnit: '1s', preAllocatedVUs: Math.max(2, rate), maxVUs: Math.max(10, rate * 10) };
  switch (PROFILE) {
    case 'smoke':
    case 'steady':
      return { executor: 'constant-arrival-rate', rate, duration: DURATION, ...arrival };
    case 'ramp':
      return {
        executor: 'ramping-arrival-rate', startRate: 0, ...arrival,
        stages: [{ target: rate, duration: '2m' }, { target: rate, duration: '3m' }, { target: 0, duration: '1m' }],
      };
    case 'spike':
      return {
        executor: 'ramping-arrival-rate', startRate: rate, ...arrival, maxVUs: Math.max(20, rate * SPIKE * 10),
        stages: [{ target: rate, duration: '1m' }, { target: rate * SPIKE, duration: '10s' },
          { target: rate * SPIKE, duration: '1m' }, { target: rate, duration: '10s' }, { target: rate, duration: '1m' }],
      };
    default:
      throw new Error(`unknown PROFILE ${PROFILE}: use smoke, steady, ramp or spike`);
  }
}

const mixes = Object.keys(SHARES).filter((mix) => SHARES[mix] > 0);
const scenarios = {};
const thresholds = { recsys_failed_requests: [`rate<${ERROR_RATIO}`] };
for (const mix of mixes) {
  scenarios[mix] = { ...executor(SHARES[mix]), exec: mix };
  thresholds[`grpc_req_duration{scenario:${mix}}`] = [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`];
  thresholds[`recsys_failed_requests{scenario:${mix}}`] = [`rate<${ERROR_RATIO}`];
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

function connected() {
  if (__ITER === 0) {
    client.connect(TARGET, CONNECT);
  }
}

export function setup() {
  if (!mixes.includes('history')) {
    return;
  }
  client.connect(TARGET, CONNECT);
  for (const view of VIEWS) {
    const response = client.invoke('recsys.v1.Recommender/RecordView', view, CALL);
    if (response.status !== grpc.StatusOK) {
      throw new Error(`RecordView ${view.productId} failed (${response.status}: ${response.error.message}): `
        + 'the history mix needs the catalog indexed and, where the gateway wants tokens, RECSYS_TOKEN');
    }
  }
  client.close();
}

function recommend(mix) {
  connected();
  const requests = REQUESTS[mix];
  const request = requests[Math.floor(Math.random() * requests.length)];
  const response = client.invoke('recsys.v1.Recommender/Recommend', request, CALL);
  const ok = check(response, {
    'status is OK': (r) => r && r.status === grpc.StatusOK,
    'has items': (r) => r && r.message && r.message.items && r.message.items.length > 0,
  });
  failed.add(!ok);
}

export function image() {
  recommend('image');
}

export function product() {
  recommend('product');
}

export function history() {
  recommend('history');
}
