"""Dead-lettering with BCC keys, as RabbitMQ does it: the dead letter is routed
with the BCC keys too, x-death routing-keys show the key and CC only.
Kept as the record of the check behind crates/warren-core/tests/ttl_dlx.rs
(dead_letters_are_routed_with_the_bcc_keys_too). Run: python bcc_dead_letter.py PORT
against RabbitMQ (or warren serve): dl-main, dl-bcc and dl-cc each get it."""
import pika, time
import sys
port = int(sys.argv[1]) if len(sys.argv) > 1 else 5672
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
ch = c.channel()
for q in ['bsrc','bother','dl-main','dl-bcc','dl-cc']:
    ch.queue_delete(q)
ch.exchange_declare('bdlx', 'direct')
ch.queue_declare('bsrc', arguments={'x-dead-letter-exchange': 'bdlx'})
ch.queue_declare('bother')
ch.queue_declare('dl-main'); ch.queue_bind('dl-main', 'bdlx', 'bsrc')
ch.queue_declare('dl-bcc'); ch.queue_bind('dl-bcc', 'bdlx', 'bother')
ch.queue_declare('dl-cc'); ch.queue_bind('dl-cc', 'bdlx', 'ccq')
ch.basic_publish('', 'bsrc', b'x', pika.BasicProperties(headers={'BCC': ['bother'], 'CC': ['ccq']}))
time.sleep(0.3)
m, p, b = ch.basic_get('bsrc')
print('src headers', p.headers)
ch.basic_reject(m.delivery_tag, requeue=False)
time.sleep(0.3)
for q in ['dl-main','dl-bcc','dl-cc','bother']:
    m, p, b = ch.basic_get(q, auto_ack=True)
    print(q, m and m.routing_key, p and p.headers)
c.close()
