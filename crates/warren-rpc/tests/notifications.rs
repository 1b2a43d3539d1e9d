//! Notifications: priorities, fields, pools, filter rules, requeue, and
//! notifications sent before any listener exists.

#[macro_use]
mod common;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use warren_rpc::{
    Context, Notification, NotificationEndpoint, NotificationFilter, NotificationListener,
    NotificationListenerOptions, NotificationResult, Notifier, Priority, Target,
};

use common::{within, Rig};

type Sink = mpsc::UnboundedSender<Notification>;

fn sink(tx: &Sink) -> impl Fn(Notification) -> std::future::Ready<()> + Send + Sync + 'static {
    let tx = tx.clone();
    move |n| {
        let _ = tx.send(n);
        std::future::ready(())
    }
}

/// The test's notification topic (unique on a shared broker).
fn topic(rig: &Rig) -> String {
    rig.name("notifications")
}

/// A notifier on the test's topic.
fn notifier(rig: &Rig, publisher_id: &str) -> Notifier {
    Notifier::new(rig.transport(), publisher_id).with_topics([topic(rig)])
}

fn listener(
    rig: &Rig,
    endpoints: Vec<NotificationEndpoint>,
    options: NotificationListenerOptions,
) -> NotificationListener {
    NotificationListener::with_options(
        rig.transport(),
        vec![Target::new(topic(rig))],
        endpoints,
        options,
    )
}

each_transport! {
    #[tokio::test]
    async fn each_priority_reaches_its_handler_with_every_field(rig) {
        let (info_tx, mut info) = mpsc::unbounded_channel();
        let (error_tx, mut error) = mpsc::unbounded_channel();
        let ep = NotificationEndpoint::new()
            .info(sink(&info_tx))
            .error(sink(&error_tx));
        let l = listener(&rig, vec![ep], Default::default());
        l.start().await.unwrap();

        let notifier = notifier(&rig, "volume.host1");
        let ctx = Context::new()
            .with("request_id", "req-7")
            .with("user", "alice");
        notifier
            .info(
                &ctx,
                "volume.create.end",
                &json!({"volume_id": "v1", "size": 10}),
            )
            .await
            .unwrap();
        notifier
            .error(&ctx, "volume.create.error", &json!({"reason": "no space"}))
            .await
            .unwrap();
        // Nobody handles warn here: it stays in its default queue.
        notifier
            .warn(&ctx, "volume.slow", &json!({}))
            .await
            .unwrap();

        let n = within(info.recv()).await.unwrap();
        assert_eq!(n.priority, Priority::Info);
        assert_eq!(n.publisher_id, "volume.host1");
        assert_eq!(n.event_type, "volume.create.end");
        assert_eq!(n.payload, json!({"volume_id": "v1", "size": 10}));
        assert_eq!(n.ctx, ctx);
        assert_eq!(
            n.metadata.message_id.len(),
            36,
            "a UUID: {}",
            n.metadata.message_id
        );
        let ts = &n.metadata.timestamp;
        assert_eq!(ts.len(), 26, "YYYY-MM-DD HH:MM:SS.ffffff: {ts}");
        assert_eq!((&ts[4..5], &ts[10..11], &ts[19..20]), ("-", " ", "."));
        #[derive(Deserialize)]
        struct Created {
            volume_id: String,
        }
        assert_eq!(n.payload_as::<Created>().unwrap().volume_id, "v1");

        let e = within(error.recv()).await.unwrap();
        assert_eq!(e.priority, Priority::Error);
        assert_eq!(e.payload["reason"], "no space");

        l.stop().await;
        assert!(info.try_recv().is_err() && error.try_recv().is_err());
        assert_eq!(rig.ready(&format!("{}.warn", topic(&rig))).await, Some(1));
        assert_eq!(l.stats().received, 2);
    }
}

each_transport! {
    #[tokio::test]
    async fn notifications_sent_before_any_listener_wait_in_their_queue(rig) {
        let notifier = notifier(&rig, "compute.host1");
        for i in 0..3 {
            notifier
                .info(
                    &Context::new(),
                    "compute.instance.create.end",
                    &json!({ "i": i }),
                )
                .await
                .unwrap();
        }
        assert_eq!(rig.ready(&format!("{}.info", topic(&rig))).await, Some(3));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let l = listener(
            &rig,
            vec![NotificationEndpoint::new().info(sink(&tx))],
            NotificationListenerOptions {
                max_in_flight: 1,
                ..Default::default()
            },
        );
        l.start().await.unwrap();
        for i in 0..3 {
            let n = within(rx.recv()).await.unwrap();
            assert_eq!(n.payload["i"], i, "in the order sent");
        }
    }
}

each_transport! {
    #[tokio::test]
    async fn pools_share_within_and_copy_across(rig) {
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        let pool = |name: &str, tx: &mpsc::UnboundedSender<(usize, Notification)>, who: usize| {
            let tx = tx.clone();
            let ep = NotificationEndpoint::new().info(move |n: Notification| {
                let _ = tx.send((who, n));
                std::future::ready(())
            });
            listener(
                &rig,
                vec![ep],
                NotificationListenerOptions::default().with_pool(rig.name(name)),
            )
        };
        let a1 = pool("billing", &a_tx, 1);
        let a2 = pool("billing", &a_tx, 2);
        let b1 = pool("audit", &b_tx, 3);
        for l in [&a1, &a2, &b1] {
            l.start().await.unwrap();
        }
        let notifier = notifier(&rig, "image.api");
        for i in 0..20 {
            notifier
                .info(&Context::new(), "image.upload", &json!({ "i": i }))
                .await
                .unwrap();
        }
        let mut billing = [0usize; 3];
        let mut seen_a = Vec::new();
        for _ in 0..20 {
            let (who, n) = within(a_rx.recv()).await.unwrap();
            billing[who] += 1;
            seen_a.push(n.payload["i"].as_u64().unwrap());
        }
        let mut seen_b = Vec::new();
        for _ in 0..20 {
            let (who, n) = within(b_rx.recv()).await.unwrap();
            assert_eq!(who, 3);
            seen_b.push(n.payload["i"].as_u64().unwrap());
        }
        for l in [&a1, &a2, &b1] {
            l.stop().await;
        }
        // Within the pool each notification went to one listener, both took
        // some; the other pool got its own copy of each.
        seen_a.sort_unstable();
        seen_b.sort_unstable();
        assert_eq!(seen_a, (0..20).collect::<Vec<_>>());
        assert_eq!(seen_b, (0..20).collect::<Vec<_>>());
        assert!(billing[1] > 0 && billing[2] > 0, "{billing:?}");
        assert!(a_rx.try_recv().is_err() && b_rx.try_recv().is_err());
        assert_eq!(a1.stats().received + a2.stats().received, 20);
        assert_eq!(b1.stats().received, 20);
        // Pools have their own queues; the default queue keeps its copies, as
        // with oslo on RabbitMQ.
        assert_eq!(rig.ready(&rig.name("billing")).await, Some(0));
        assert_eq!(rig.ready(&rig.name("audit")).await, Some(0));
        assert_eq!(rig.ready(&format!("{}.info", topic(&rig))).await, Some(20));
    }
}

each_transport! {
    #[tokio::test]
    async fn filter_rules_select_what_an_endpoint_sees(rig) {
        let (compute_tx, mut compute) = mpsc::unbounded_channel();
        let (project_tx, mut project) = mpsc::unbounded_channel();
        let (all_tx, mut all) = mpsc::unbounded_channel();
        let compute_filter = NotificationFilter::builder()
            .publisher_id(r"^compute\..*")
            .event_type(r"compute\.instance\.(create|delete)\.end$")
            .build()
            .unwrap();
        let project_filter = NotificationFilter::builder()
            .context("project_id", "^p1$")
            .metadata("timestamp", r"\d{4}-\d{2}-\d{2} ")
            .payload("state", "^active$")
            .build()
            .unwrap();
        let endpoints = vec![
            NotificationEndpoint::new()
                .with_filter(compute_filter)
                .info(sink(&compute_tx)),
            NotificationEndpoint::new()
                .with_filter(project_filter)
                .info(sink(&project_tx)),
            NotificationEndpoint::new().info(sink(&all_tx)),
        ];
        // One at a time, so that when the last one arrives, all before it were
        // handled.
        let l = listener(
            &rig,
            endpoints,
            NotificationListenerOptions {
                max_in_flight: 1,
                ..Default::default()
            },
        );
        l.start().await.unwrap();
        let compute_n = notifier(&rig, "compute.host1");
        let volume_n = notifier(&rig, "volume.host1");
        let p1 = Context::new().with("project_id", "p1");
        let p2 = Context::new().with("project_id", "p2");
        let active = json!({"state": "active"});
        compute_n
            .info(&p1, "compute.instance.create.end", &active)
            .await
            .unwrap(); // both
        compute_n
            .info(&p2, "compute.instance.create.start", &active)
            .await
            .unwrap(); // neither
        volume_n
            .info(&p1, "compute.instance.delete.end", &active)
            .await
            .unwrap(); // project
        compute_n
            .info(&p2, "compute.instance.delete.end", &json!({"state": 1}))
            .await
            .unwrap(); // compute
        compute_n
            .info(&p1, "compute.instance.update", &json!({"state": "error"}))
            .await
            .unwrap(); // neither
        compute_n.info(&Context::new(), "last", &()).await.unwrap(); // neither: no project_id
        let mut all_events = Vec::new();
        while all_events.last().map(String::as_str) != Some("last") {
            let n: Notification = within(all.recv()).await.unwrap();
            all_events.push(n.event_type);
        }
        assert_eq!(all_events.len(), 6);
        let drain = |rx: &mut mpsc::UnboundedReceiver<Notification>| {
            let mut v = Vec::new();
            while let Ok(n) = rx.try_recv() {
                v.push((n.publisher_id, n.event_type));
            }
            v
        };
        assert_eq!(
            drain(&mut compute),
            [
                (
                    "compute.host1".to_owned(),
                    "compute.instance.create.end".to_owned()
                ),
                (
                    "compute.host1".to_owned(),
                    "compute.instance.delete.end".to_owned()
                ),
            ]
        );
        assert_eq!(
            drain(&mut project),
            [
                (
                    "compute.host1".to_owned(),
                    "compute.instance.create.end".to_owned()
                ),
                (
                    "volume.host1".to_owned(),
                    "compute.instance.delete.end".to_owned()
                ),
            ]
        );
    }
}

each_transport! {
    #[tokio::test]
    async fn every_topic_gets_a_copy(rig) {
        let (first, second) = (rig.name("notifications"), rig.name("versioned"));
        let notifier = Notifier::new(rig.transport(), "svc").with_topics([first.clone(), second.clone()]);
        notifier
            .sample(&Context::new(), "meter", &json!({"v": 1}))
            .await
            .unwrap();
        assert_eq!(rig.ready(&format!("{first}.sample")).await, Some(1));
        assert_eq!(rig.ready(&format!("{second}.sample")).await, Some(1));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let l = NotificationListener::new(
            rig.transport(),
            vec![Target::new(&first), Target::new(&second)],
            vec![NotificationEndpoint::new().sample(sink(&tx))],
        );
        l.start().await.unwrap();
        for _ in 0..2 {
            let n = within(rx.recv()).await.unwrap();
            assert_eq!(n.priority, Priority::Sample);
        }
        // A prepared notifier sends under another publisher id.
        notifier
            .prepare("svc.other")
            .sample(&Context::new(), "meter", &())
            .await
            .unwrap();
        let n = within(rx.recv()).await.unwrap();
        assert_eq!(n.publisher_id, "svc.other");
    }
}

each_transport! {
    #[tokio::test]
    async fn requeue_redelivers_when_allowed(rig) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ep = NotificationEndpoint::new().critical(move |n: Notification| {
            let _ = tx.send(n);
            async { NotificationResult::Requeue }
        });
        let l = listener(
            &rig,
            vec![ep],
            NotificationListenerOptions {
                allow_requeue: true,
                max_in_flight: 1,
                ..Default::default()
            },
        );
        l.start().await.unwrap();
        notifier(&rig, "x")
            .critical(&Context::new(), "disk.failed", &json!({}))
            .await
            .unwrap();
        // Requeued each time: it keeps coming back, the same notification.
        let first = within(rx.recv()).await.unwrap();
        let again = within(rx.recv()).await.unwrap();
        assert_eq!(first.metadata.message_id, again.metadata.message_id);
        l.stop().await;
        assert!(l.stats().requeued >= 1);
    }
}

each_transport! {
    #[tokio::test]
    async fn requeue_is_ignored_unless_allowed_and_panics_are_contained(rig) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ep = NotificationEndpoint::new()
            .audit(|_n: Notification| async { NotificationResult::Requeue })
            .debug(|n: Notification| async move {
                if n.payload["boom"] == true {
                    panic!("handler bug");
                }
            })
            .info(sink(&tx));
        // One pool queue for the three priorities, one at a time: in order.
        let l = listener(
            &rig,
            vec![ep],
            NotificationListenerOptions {
                max_in_flight: 1,
                ..Default::default()
            }
            .with_pool(rig.name("p")),
        );
        l.start().await.unwrap();
        let n = notifier(&rig, "x");
        n.audit(&Context::new(), "a", &()).await.unwrap();
        n.debug(&Context::new(), "d", &json!({"boom": true}))
            .await
            .unwrap();
        n.info(&Context::new(), "i", &()).await.unwrap();
        within(rx.recv()).await.unwrap();
        l.stop().await;
        let st = l.stats();
        assert_eq!(st.requeued, 0);
        assert_eq!(st.panics, 1);
        // All three acknowledged: none ready again after the listener let go.
        assert_eq!(rig.ready(&rig.name("p")).await, Some(0));
        if let Some(b) = rig.broker() {
            let s = b.queue_stats(&rig.name("p")).unwrap();
            assert_eq!((s.ready, s.unacked, s.acked), (0, 0, 3));
        }
    }
}
