// @kurrent/kurrentdb-client (KurrentDB's Node client, unchanged) against herald's event
// store listener, driven by tests/python/test_eventstore_node.py: appends with expected
// revisions (BatchAppend, and Append when the call carries credentials), a conflict,
// stream reads both ways, a filtered $all read, a catch-up stream subscription that goes
// live, a filtered $all subscription, and a soft delete. Prints one JSON line (BigInts as
// strings) and exits 0, or prints the error on stderr and exits 1; a hard deadline ends
// it either way.
// env: ES_URL (connection string), TAG (a token no other run uses, no '-')
'use strict'

const {
  KurrentDBClient,
  jsonEvent,
  eventTypeFilter,
  FORWARDS,
  BACKWARDS,
  START,
  END,
  NO_STREAM,
  ANY,
} = require('@kurrent/kurrentdb-client')

function env(name) {
  const value = process.env[name]
  if (!value) {
    throw new Error(`environment variable ${name} is required`)
  }
  return value
}

// Every call's own deadline (ms), so a server that stops answering fails a step, never
// hangs it; the whole script has DEADLINE_MS.
const CALL_DEADLINE_MS = 10000
const DEADLINE_MS = 60000

// What the script is doing, named in its error output.
let stage = 'connect'

// JSON with BigInts (revisions, positions) as decimal strings.
function json(value) {
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))
}

function run(main) {
  const timer = setTimeout(() => {
    console.error(`timed out after ${DEADLINE_MS} ms during ${stage}`)
    process.exit(1)
  }, DEADLINE_MS)
  main()
    .then((result) => {
      clearTimeout(timer)
      process.stdout.write(json(result) + '\n')
      process.exit(0)
    })
    .catch((err) => {
      clearTimeout(timer)
      console.error(`failed during ${stage}:`, err && err.stack ? err.stack : err)
      process.exit(1)
    })
}

function summary(resolved) {
  const e = resolved.event
  return { stream: e.streamId, revision: e.revision, type: e.type, data: e.data, position: e.position.commit }
}

async function collect(iterable) {
  const out = []
  for await (const resolved of iterable) out.push(summary(resolved))
  return out
}

// The error a promise rejects with, as the fields a caller checks; null if it resolved.
async function failure(promise) {
  try {
    await promise
    return null
  } catch (err) {
    return {
      name: err.constructor.name,
      type: err.type,
      streamName: err.streamName,
      expectedState: err.expectedState,
      actualState: err.actualState,
    }
  }
}

// The first `count` events of a subscription, the 'caughtUp' moment marked in the list;
// `onCaughtUp` runs once when it comes (to append the live event).
function take(subscription, count, onCaughtUp) {
  return new Promise((resolve, reject) => {
    const seen = []
    let caughtUp = false
    let done = false
    subscription.on('caughtUp', () => {
      if (caughtUp) return
      caughtUp = true
      seen.push('caughtUp')
      if (onCaughtUp) Promise.resolve(onCaughtUp()).catch(reject)
    })
    subscription.on('error', reject)
    // Ending is expected once the caller unsubscribes, after `count` events.
    subscription.on('end', () => {
      if (!done) reject(new Error(`subscription ended after ${json(seen)}`))
    })
    subscription.on('data', (resolved) => {
      if (done) return
      seen.push(summary(resolved))
      if (seen.filter((s) => s !== 'caughtUp').length === count) {
        done = true
        resolve(seen)
      }
    })
  })
}

run(async () => {
  const url = env('ES_URL')
  const tag = env('TAG')
  const stream = `${tag}order-1`
  const other = `${tag}order-2`
  const placed = `${tag}OrderPlaced`
  const paid = `${tag}OrderPaid`
  const shipped = `${tag}OrderShipped`
  const deadline = CALL_DEADLINE_MS

  const client = KurrentDBClient.connectionString(url)
  try {
    const out = {}

    stage = 'append no_stream'
    out.first = await client.appendToStream(
      stream,
      [jsonEvent({ type: placed, data: { n: 0 } }), jsonEvent({ type: paid, data: { n: 1 } })],
      { streamState: NO_STREAM, deadline },
    )
    stage = 'append at an exact revision'
    out.second = await client.appendToStream(stream, jsonEvent({ type: shipped, data: { n: 2 } }), {
      streamState: out.first.nextExpectedRevision,
      deadline,
    })
    stage = 'conflicting appends'
    out.conflictExact = await failure(
      client.appendToStream(stream, jsonEvent({ type: shipped, data: { n: 99 } }), { streamState: 1n, deadline }),
    )
    out.conflictNoStream = await failure(
      client.appendToStream(stream, jsonEvent({ type: shipped, data: { n: 99 } }), { streamState: NO_STREAM, deadline }),
    )
    // With credentials the client calls the unary Append instead of BatchAppend.
    stage = 'append through Append'
    const credentials = { username: 'admin', password: 'changeit' }
    out.unary = await client.appendToStream(other, jsonEvent({ type: `${tag}Unrelated`, data: { n: 0 } }), {
      streamState: NO_STREAM,
      credentials,
      deadline,
    })
    out.unaryConflict = await failure(
      client.appendToStream(other, jsonEvent({ type: `${tag}Unrelated`, data: {} }), {
        streamState: 5n,
        credentials,
        deadline,
      }),
    )

    stage = 'read forwards'
    out.forwards = await collect(client.readStream(stream, { direction: FORWARDS, fromRevision: START, deadline }))
    stage = 'read backwards'
    out.backwards = await collect(
      client.readStream(stream, { direction: BACKWARDS, fromRevision: END, maxCount: 2, deadline }),
    )
    out.fromRevision = await collect(client.readStream(stream, { fromRevision: 1n, maxCount: 1, deadline }))
    stage = 'read a missing stream'
    out.missing = await failure(collect(client.readStream(`${tag}nothing-here`, { deadline })))

    stage = 'read $all with an event type filter'
    out.all = await collect(
      client.readAll({ fromPosition: START, direction: FORWARDS, filter: eventTypeFilter({ prefixes: [tag] }), deadline }),
    )
    // Backwards from END: the client's reads go through its Rust bridge, whose
    // `position(Start)` also sets the direction to forwards (and END to backwards).
    out.allRegex = await collect(
      client.readAll({
        fromPosition: END,
        direction: BACKWARDS,
        filter: eventTypeFilter({ regex: `^${tag}Order(Paid|Shipped)$` }),
        deadline,
      }),
    )

    stage = 'catch-up stream subscription'
    const live = jsonEvent({ type: `${tag}OrderDelivered`, data: { n: 3 } })
    const sub = client.subscribeToStream(stream, { fromRevision: START })
    try {
      out.subscription = await take(sub, 4, async () => {
        out.liveAppend = await client.appendToStream(stream, live, { streamState: 2n, deadline })
      })
    } finally {
      await sub.unsubscribe()
    }

    // From a revision, a subscription starts after it (as KurrentDB's does).
    stage = 'stream subscription from a revision'
    const fromRev = client.subscribeToStream(stream, { fromRevision: 1n })
    try {
      out.subscriptionFromRevision = await take(fromRev, 2)
    } finally {
      await fromRev.unsubscribe()
    }

    stage = 'filtered $all subscription'
    const allSub = client.subscribeToAll({ fromPosition: START, filter: eventTypeFilter({ regex: `^${tag}Order` }) })
    try {
      out.allSubscription = await take(allSub, 4)
    } finally {
      await allSub.unsubscribe()
    }

    stage = 'delete'
    out.deleted = await client.deleteStream(stream, { expectedRevision: 3n, deadline })
    out.readDeleted = await failure(collect(client.readStream(stream, { deadline })))
    out.deleteAgainExact = await failure(client.deleteStream(other, { expectedRevision: 7n, deadline }))
    stage = 'append after a soft delete'
    out.afterDelete = await client.appendToStream(stream, jsonEvent({ type: placed, data: { n: 4 } }), {
      streamState: ANY,
      deadline,
    })
    out.readAfterDelete = await collect(client.readStream(stream, { deadline }))

    // Stream metadata: written to `$$<stream>` as a $metadata event, read back by the
    // client (backwards from the end of the metadata stream), $maxCount enforced on read.
    stage = 'stream metadata'
    const capped = `${tag}capped-1`
    await client.appendToStream(capped, [0, 1, 2].map((n) => jsonEvent({ type: placed, data: { n } })), {
      streamState: NO_STREAM,
      deadline,
    })
    out.metadataBefore = await client.getStreamMetadata(capped, { deadline })
    out.setMetadata = await client.setStreamMetadata(capped, { maxCount: 2, owner: 'billing' }, { deadline })
    out.metadata = await client.getStreamMetadata(capped, { deadline })
    out.readCapped = await collect(client.readStream(capped, { deadline }))

    stage = 'tombstone'
    out.tombstoned = await client.tombstoneStream(other, { deadline })
    out.readTombstoned = await failure(collect(client.readStream(other, { deadline })))
    out.appendTombstoned = await failure(
      client.appendToStream(other, jsonEvent({ type: placed, data: {} }), { streamState: ANY, deadline }),
    )
    return out
  } finally {
    stage = 'dispose'
    await client.dispose().catch(() => {})
  }
})
