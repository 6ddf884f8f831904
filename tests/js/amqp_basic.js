// amqplib against an AMQP 0-9-1 broker (herald, or RabbitMQ to check the test), driven
// by tests/python/test_amqp.py: a confirm channel publishes COUNT persistent messages to a
// durable queue, a consumer with prefetch acks them one by one, then a topic exchange
// routes a few keys to `orders.*` and `orders.#`. Prints one JSON line and exits 0, or
// prints the error on stderr and exits 1; a hard deadline ends it either way.
// env: AMQP_URL, QUEUE, EXCHANGE, COUNT
'use strict'

const amqp = require('amqplib')

function env(name) {
  const value = process.env[name]
  if (!value) {
    throw new Error(`environment variable ${name} is required`)
  }
  return value
}

// What the script is doing, named in its error output.
let stage = 'connect'

function run(main, deadlineMs = 40000) {
  const timer = setTimeout(() => {
    console.error(`timed out after ${deadlineMs} ms during ${stage}`)
    process.exit(1)
  }, deadlineMs)
  main()
    .then((result) => {
      clearTimeout(timer)
      process.stdout.write(JSON.stringify(result) + '\n')
      process.exit(0)
    })
    .catch((err) => {
      clearTimeout(timer)
      console.error(`failed during ${stage}:`, err && err.stack ? err.stack : err)
      process.exit(1)
    })
}

// Resolves once `count` messages were consumed (each acked), rejects if the broker
// cancels the consumer.
function consumeAll(ch, queue, count, onMessage) {
  return new Promise((resolve, reject) => {
    let seen = 0
    let tag = null
    let done = false
    ch.consume(queue, (msg) => {
      if (msg === null) {
        reject(new Error(`consumer on ${queue} cancelled by the broker`))
        return
      }
      onMessage(msg)
      ch.ack(msg)
      seen += 1
      if (seen === count) {
        done = true
        if (tag !== null) resolve(tag)
      }
    })
      .then((ok) => {
        tag = ok.consumerTag
        if (done) resolve(tag)
      })
      .catch(reject)
  })
}

async function drain(ch, queue) {
  const keys = []
  for (;;) {
    const msg = await ch.get(queue, { noAck: true })
    if (msg === false) return keys
    keys.push(msg.fields.routingKey)
  }
}

run(async () => {
  const url = env('AMQP_URL')
  const queue = env('QUEUE')
  const exchange = env('EXCHANGE')
  const count = parseInt(env('COUNT'), 10)

  const conn = await amqp.connect(url, { timeout: 10000 })
  conn.on('error', (err) => console.error(`connection error during ${stage}:`, err.message))
  try {
    // Publish with confirms.
    stage = 'confirm publish'
    const pub = await conn.createConfirmChannel()
    await pub.assertQueue(queue, { durable: true })
    let confirmed = 0
    const confirms = []
    for (let i = 0; i < count; i++) {
      confirms.push(
        new Promise((resolve, reject) => {
          pub.sendToQueue(queue, Buffer.from(`msg-${i}`), { persistent: true, contentType: 'text/plain' }, (err) => {
            if (err) {
              reject(err)
            } else {
              confirmed += 1
              resolve()
            }
          })
        }),
      )
    }
    await Promise.all(confirms)
    await pub.waitForConfirms()

    // Consume with acks.
    stage = 'consume'
    const sub = await conn.createChannel()
    await sub.prefetch(100)
    const consumed = []
    let redelivered = 0
    let persistent = true
    const tag = await consumeAll(sub, queue, count, (msg) => {
      consumed.push(msg.content.toString())
      if (msg.fields.redelivered) redelivered += 1
      if (msg.properties.deliveryMode !== 2 || msg.properties.contentType !== 'text/plain') persistent = false
    })
    stage = 'cancel'
    await sub.cancel(tag)
    await sub.close()
    // Acked: nothing is requeued when the channel closes.
    stage = 'check queue after acks'
    const check = await conn.createChannel()
    const { messageCount: leftAfterAck } = await check.checkQueue(queue)
    await check.deleteQueue(queue)

    // Topic routing.
    stage = 'topic routing'
    await check.assertExchange(exchange, 'topic', { durable: false })
    const star = (await check.assertQueue('', { exclusive: true })).queue
    const hash = (await check.assertQueue('', { exclusive: true })).queue
    await check.bindQueue(star, exchange, 'orders.*')
    await check.bindQueue(hash, exchange, 'orders.#')
    for (const key of ['orders.placed', 'orders.placed.eu', 'orders', 'users.created']) {
      pub.publish(exchange, key, Buffer.from(key))
    }
    await pub.waitForConfirms()
    const topic = { star: await drain(check, star), hash: await drain(check, hash) }
    await check.deleteExchange(exchange)
    await check.close()
    await pub.close()

    return { confirmed, consumed, redelivered, persistent, leftAfterAck, topic }
  } finally {
    await conn.close().catch(() => {})
  }
})
