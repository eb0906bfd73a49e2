//! Property tests of the framing and of the wire envelope: any sequence of frames
//! round-trips; a truncated stream is an error, never a panic; oversize frames are refused
//! both ways; every API message (requests, responses, SDFS metadata and data requests,
//! inference requests and responses, keyring requests and answers, telemetry frames)
//! survives `wire::encode` and `wire::decode`, and no strict prefix of an encoding decodes.

use dml_shared::api::{IdInfo, LeaderInfo, MemberInfo, MemberState, Request, Response, Stats};
use dml_shared::auth::ClusterKey;
use dml_shared::auth::put_seal::PutKey;
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::error::Error;
use dml_shared::framing::{read_frame, write_frame};
use dml_shared::id::NodeId;
use dml_shared::infer::{
    ImageResult, InferRequest, InferResponse, JobDetail, JobInfo, JobState, LatencyInfo, Lease,
    ModelFigures, ModelInfo, Outcome, Placement, Prediction, QueryTiming, RateInfo, Spread,
    WorkerFigures, WorkerProgress,
};
use dml_shared::keyring::{
    Changed, KeyListing, KeySecret, KeyringAnswer, KeyringCommand, KeyringList, KeyringRequest,
    KeyringResponse, KeyringState, LocalKeyring,
};
use dml_shared::sdfs::{
    BatchCommit, BatchFile, ChangeOutcome, DataRequest, FileCommit, FileInfo, Holding, Keep,
    MetaRequest, MetaResponse, StoredFile, VersionInfo,
};
use dml_shared::telemetry::{
    BalanceProgress, ClusterFigures, EventKind, Frame, NodeStats, RepairProgress, SdfsHealth,
    TelemetryEvent,
};
use dml_shared::wire::{self, Kind};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------- leaves

fn text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    // serde writes a V6 address without flow info or scope id, so none is generated.
    let ip = prop_oneof![
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<Ipv6Addr>().prop_map(IpAddr::V6),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn addrs() -> impl Strategy<Value = Vec<SocketAddr>> {
    vec(addr(), 0..4)
}

fn node() -> impl Strategy<Value = NodeId> {
    (addr(), any::<u64>()).prop_map(|(a, s)| NodeId::new(a, s))
}

/// Any f64 but NaN (which is not equal to itself).
fn num() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN", |v| !v.is_nan())
}

fn num32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN", |v| !v.is_nan())
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

fn remote_error() -> impl Strategy<Value = dml_shared::RemoteError> {
    (0..dml_shared::ErrorKind::ALL.len(), text())
        .prop_map(|(k, m)| dml_shared::RemoteError::new(dml_shared::ErrorKind::ALL[k], m))
}

fn remote_err_or<T: Debug + Clone + 'static>(
    ok: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Result<T, dml_shared::RemoteError>> {
    prop_oneof![ok.prop_map(Ok), remote_error().prop_map(Err)]
}

// ---------------------------------------------------------------- SDFS

fn version_info() -> impl Strategy<Value = VersionInfo> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        addrs(),
        any::<u64>(),
    )
        .prop_map(
            |(version, size, checksum, replicas, committed_ms)| VersionInfo {
                version,
                size,
                checksum,
                replicas,
                committed_ms,
            },
        )
}

fn file_info() -> impl Strategy<Value = FileInfo> {
    (text(), vec(version_info(), 0..3)).prop_map(|(name, versions)| FileInfo { name, versions })
}

fn holding() -> impl Strategy<Value = Holding> {
    (text(), any::<u64>(), any::<u64>()).prop_map(|(name, version, size)| Holding {
        name,
        version,
        size,
    })
}

fn meta_request() -> impl Strategy<Value = MetaRequest> {
    let leaf = prop_oneof![
        (text(), any::<u64>()).prop_map(|(name, size)| MetaRequest::BeginPut { name, size }),
        (
            text(),
            any::<u64>(),
            any::<[u8; 32]>(),
            addrs(),
            any::<u64>()
        )
            .prop_map(
                |(name, version, checksum, holders, plan)| MetaRequest::CommitPut {
                    name,
                    version,
                    checksum,
                    holders,
                    plan
                }
            ),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(name, version, plan)| {
            MetaRequest::AbortPut {
                name,
                version,
                plan,
            }
        }),
        (text(), any::<u64>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
            |(name, version, checksum, plan)| MetaRequest::PutOutcome {
                name,
                version,
                checksum,
                plan
            }
        ),
        text().prop_map(|name| MetaRequest::Delete { name }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(name, term, through)| {
            MetaRequest::DeleteOutcome {
                name,
                term,
                through,
            }
        }),
        text().prop_map(|name| MetaRequest::Stat { name }),
        text().prop_map(|glob| MetaRequest::List { glob }),
        Just(MetaRequest::Count),
        Just(MetaRequest::Nodes),
        (addr(), vec((text(), any::<u64>(), any::<[u8; 32]>()), 0..4))
            .prop_map(|(node, items)| MetaRequest::Wanted { node, items }),
        (
            addr(),
            proptest::option::of((text(), any::<u64>())),
            any::<u32>()
        )
            .prop_map(|(node, after, limit)| MetaRequest::Assigned { node, after, limit }),
        vec((text(), any::<u64>()), 0..4).prop_map(|files| MetaRequest::BeginPutBatch { files }),
        (any::<u64>(), vec(batch_commit(), 0..3))
            .prop_map(|(plan, files)| MetaRequest::CommitPutBatch { plan, files }),
    ];
    leaf
}

fn batch_commit() -> impl Strategy<Value = BatchCommit> {
    (text(), any::<u64>(), any::<[u8; 32]>(), addrs()).prop_map(
        |(name, version, checksum, holders)| BatchCommit {
            name,
            version,
            checksum,
            holders,
        },
    )
}

fn batch_file() -> impl Strategy<Value = BatchFile> {
    (text(), any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(
        |(name, version, size, checksum)| BatchFile {
            name,
            version,
            size,
            checksum,
        },
    )
}

fn stored_file() -> impl Strategy<Value = StoredFile> {
    (addrs(), vec((addr(), text()), 0..3))
        .prop_map(|(holders, failed)| StoredFile { holders, failed })
}

fn file_commit() -> impl Strategy<Value = FileCommit> {
    prop_oneof![
        any::<u64>().prop_map(|version| FileCommit::Committed { version }),
        remote_error().prop_map(FileCommit::Refused),
        text().prop_map(|reason| FileCommit::Unconfirmed { reason }),
    ]
}

fn control_request() -> impl Strategy<Value = ControlRequest> {
    prop_oneof![
        meta_request().prop_map(ControlRequest::Sdfs),
        infer_request().prop_map(ControlRequest::Infer),
        keyring_command().prop_map(ControlRequest::Keyring),
    ]
}

fn control_response() -> impl Strategy<Value = ControlResponse> {
    prop_oneof![
        meta_response().prop_map(ControlResponse::Sdfs),
        infer_response().prop_map(ControlResponse::Infer),
        keyring_answer().prop_map(ControlResponse::Keyring),
    ]
}

// ---------------------------------------------------------------- keyring

fn key_secret() -> impl Strategy<Value = KeySecret> {
    any::<[u8; 32]>().prop_map(|b| KeySecret::of(&ClusterKey::from_bytes(b)))
}

fn keyring_state() -> impl Strategy<Value = KeyringState> {
    (any::<u64>(), key_secret(), vec(key_secret(), 0..3)).prop_map(|(version, primary, keys)| {
        KeyringState {
            version,
            primary,
            keys,
        }
    })
}

fn changed() -> impl Strategy<Value = Changed> {
    (text(), any::<u64>(), any::<bool>()).prop_map(|(fingerprint, version, changed)| Changed {
        fingerprint,
        version,
        changed,
    })
}

fn local_keyring() -> impl Strategy<Value = LocalKeyring> {
    (any::<u64>(), text(), vec(text(), 0..3)).prop_map(|(version, primary, keys)| LocalKeyring {
        version,
        primary,
        keys,
    })
}

fn keyring_command() -> impl Strategy<Value = KeyringCommand> {
    prop_oneof![
        any::<u64>().prop_map(|have| KeyringCommand::Fetch { have }),
        key_secret().prop_map(|key| KeyringCommand::Install { key }),
        text().prop_map(|fingerprint| KeyringCommand::Use { fingerprint }),
        text().prop_map(|fingerprint| KeyringCommand::Remove { fingerprint }),
    ]
}

fn keyring_answer() -> impl Strategy<Value = KeyringAnswer> {
    prop_oneof![
        proptest::option::of(keyring_state()).prop_map(KeyringAnswer::Ring),
        changed().prop_map(KeyringAnswer::Changed),
    ]
}

fn keyring_request() -> impl Strategy<Value = KeyringRequest> {
    prop_oneof![
        Just(KeyringRequest::List),
        key_secret().prop_map(|key| KeyringRequest::Install { key }),
        text().prop_map(|fingerprint| KeyringRequest::Use { fingerprint }),
        text().prop_map(|fingerprint| KeyringRequest::Remove { fingerprint }),
        Just(KeyringRequest::Local),
    ]
}

fn keyring_response() -> impl Strategy<Value = KeyringResponse> {
    let listing = (
        text(),
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(fingerprint, primary, committed, installed_on, primary_on)| KeyListing {
                fingerprint,
                primary,
                committed,
                installed_on,
                primary_on,
            },
        );
    let list = (
        any::<u64>(),
        vec(listing, 0..3),
        any::<u32>(),
        vec((addr(), text()), 0..2),
    )
        .prop_map(|(version, keys, agents, unreachable)| KeyringList {
            version,
            keys,
            agents,
            unreachable,
        });
    prop_oneof![
        list.prop_map(KeyringResponse::List),
        changed().prop_map(KeyringResponse::Changed),
        local_keyring().prop_map(KeyringResponse::Local),
    ]
}

fn meta_response() -> impl Strategy<Value = MetaResponse> {
    prop_oneof![
        (any::<u64>(), addrs(), any::<usize>(), any::<u64>()).prop_map(
            |(version, chain, quorum, plan)| MetaResponse::PutPlan {
                version,
                chain,
                quorum,
                plan,
            }
        ),
        any::<u64>().prop_map(|version| MetaResponse::Committed { version }),
        Just(MetaResponse::Done),
        text().prop_map(|reason| MetaResponse::Unconfirmed { reason }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(reason, term, through)| {
            MetaResponse::DeleteUnconfirmed {
                reason,
                term,
                through,
            }
        }),
        prop_oneof![
            Just(ChangeOutcome::Committed),
            Just(ChangeOutcome::Failed),
            Just(ChangeOutcome::Pending)
        ]
        .prop_map(MetaResponse::Outcome),
        file_info().prop_map(MetaResponse::File),
        vec(file_info(), 0..3).prop_map(MetaResponse::Files),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(files, versions, bytes)| {
            MetaResponse::Count {
                files,
                versions,
                bytes,
            }
        }),
        vec((addr(), vec(holding(), 0..3)), 0..3).prop_map(MetaResponse::Nodes),
        vec(
            prop_oneof![Just(Keep::Yes), Just(Keep::No), Just(Keep::Refetch)],
            0..8
        )
        .prop_map(MetaResponse::Wanted),
        (vec((text(), version_info()), 0..3), any::<bool>())
            .prop_map(|(items, more)| MetaResponse::Assigned { items, more }),
        (
            vec(any::<u64>(), 0..4),
            addrs(),
            any::<usize>(),
            any::<u64>()
        )
            .prop_map(
                |(versions, chain, quorum, plan)| MetaResponse::PutBatchPlan {
                    versions,
                    chain,
                    quorum,
                    plan,
                }
            ),
        vec(file_commit(), 0..4).prop_map(MetaResponse::CommittedBatch),
    ]
}

fn data_request() -> impl Strategy<Value = DataRequest> {
    prop_oneof![
        (
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<Option<[u8; 32]>>(),
            addrs(),
            any::<u64>(),
            any::<Option<[u8; 32]>>()
        )
            .prop_map(|(name, version, size, checksum, downstream, plan, seal)| {
                DataRequest::Write {
                    name,
                    version,
                    size,
                    checksum,
                    downstream,
                    plan,
                    seal: seal.map(PutKey),
                }
            }),
        (text(), any::<u64>()).prop_map(|(name, version)| DataRequest::Read { name, version }),
        (
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            addrs()
        )
            .prop_map(
                |(name, version, size, checksum, sources)| DataRequest::Replicate {
                    name,
                    version,
                    size,
                    checksum,
                    sources
                }
            ),
        Just(DataRequest::Store),
        (text(), any::<u64>()).prop_map(|(name, through)| DataRequest::Drop { name, through }),
        (vec(batch_file(), 0..4), addrs(), any::<u64>()).prop_map(|(files, downstream, plan)| {
            DataRequest::WriteBatch {
                files,
                downstream,
                plan,
            }
        }),
    ]
}

// ---------------------------------------------------------------- inference

fn image_result() -> impl Strategy<Value = ImageResult> {
    let pred = (any::<u32>(), text(), num32()).prop_map(|(class, label, score)| Prediction {
        class,
        label,
        score,
    });
    let outcome = prop_oneof![
        vec(pred, 0..5).prop_map(Outcome::Top),
        text().prop_map(Outcome::Error),
    ];
    (any::<u32>(), text(), outcome).prop_map(|(index, image, outcome)| ImageResult {
        index,
        image,
        outcome,
    })
}

fn job_info() -> impl Strategy<Value = JobInfo> {
    let state = prop_oneof![
        Just(JobState::Running),
        Just(JobState::Done),
        Just(JobState::Failed),
        Just(JobState::Cancelled)
    ];
    (
        (any::<u64>(), text(), text(), any::<u32>(), any::<u32>()),
        (
            any::<u32>(),
            any::<u64>(),
            state,
            proptest::option::of(text()),
        ),
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (id, model, dataset, images, done),
                (errors, queries, state, reason),
                (submitted_ms, finished_ms, output, stalled),
            )| JobInfo {
                id,
                model,
                dataset,
                images,
                done,
                errors,
                queries,
                state,
                reason,
                submitted_ms,
                finished_ms,
                output,
                stalled,
            },
        )
}

fn model_info() -> impl Strategy<Value = ModelInfo> {
    (
        (text(), any::<u32>(), any::<u32>()),
        text(),
        proptest::option::of(any::<u64>()),
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (name, batch_size, max_batch),
                file,
                version,
                (max_queue_delay_ms, p99_target_ms, effective_batch),
            )| ModelInfo {
                name,
                batch_size,
                max_batch,
                file,
                version,
                max_queue_delay_ms,
                p99_target_ms,
                effective_batch,
            },
        )
}

fn rate_info() -> impl Strategy<Value = RateInfo> {
    (text(), num(), num(), any::<u64>(), any::<u64>(), num()).prop_map(
        |(model, queries_per_s, images_per_s, queries_total, images_total, mean_batch)| RateInfo {
            model,
            queries_per_s,
            images_per_s,
            queries_total,
            images_total,
            mean_batch,
        },
    )
}

fn spread() -> impl Strategy<Value = Spread> {
    (num(), num(), num(), num(), num()).prop_map(|(mean_ms, p50_ms, p95_ms, p99_ms, max_ms)| {
        Spread {
            mean_ms,
            p50_ms,
            p95_ms,
            p99_ms,
            max_ms,
        }
    })
}

fn latency_info() -> impl Strategy<Value = LatencyInfo> {
    (
        text(),
        any::<u64>(),
        (num(), num(), num(), num()),
        (num(), num(), num()),
        (spread(), spread()),
    )
        .prop_map(
            |(
                model,
                count,
                (mean_ms, stddev_ms, p50_ms, p90_ms),
                (p95_ms, p99_ms, max_ms),
                (queue, compute),
            )| {
                LatencyInfo {
                    model,
                    count,
                    mean_ms,
                    stddev_ms,
                    p50_ms,
                    p90_ms,
                    p95_ms,
                    p99_ms,
                    max_ms,
                    queue,
                    compute,
                }
            },
        )
}

fn placement() -> impl Strategy<Value = Placement> {
    (
        any::<u64>(),
        text(),
        vec((addr(), any::<u32>()), 0..3),
        (any::<u32>(), num(), num()),
    )
        .prop_map(
            |(job, model, workers, (weight, query_share, time_share))| Placement {
                job,
                model,
                workers,
                weight,
                query_share,
                time_share,
            },
        )
}

fn worker_figures() -> impl Strategy<Value = WorkerFigures> {
    let counts = || vec((any::<u64>(), any::<u64>()), 0..3);
    vec((text(), counts(), counts(), counts()), 0..2).prop_map(|models| WorkerFigures {
        models: models
            .into_iter()
            .map(|(model, total, queue, compute)| ModelFigures {
                model,
                total,
                queue,
                compute,
            })
            .collect(),
    })
}

fn lease() -> impl Strategy<Value = Lease> {
    (
        (any::<u64>(), any::<u64>(), text(), text()),
        version_info(),
        vec((any::<u32>(), text(), version_info()), 0..3),
        any::<u64>(),
    )
        .prop_map(
            |((query, job, model, model_file), model_version, images, lease_ms)| Lease {
                query,
                job,
                model,
                model_file,
                model_version,
                images,
                lease_ms,
                with: Vec::new(),
            },
        )
}

/// A lease with the queries of other jobs batched with it.
fn batched_lease() -> impl Strategy<Value = Lease> {
    (lease(), vec(lease(), 0..3)).prop_map(|(mut l, with)| {
        l.with = with;
        l
    })
}

fn infer_request() -> impl Strategy<Value = InferRequest> {
    prop_oneof![
        (
            text(),
            proptest::option::of(any::<u32>()),
            text(),
            any::<u32>()
        )
            .prop_map(|(model, count, dataset, weight)| {
                InferRequest::Submit {
                    model,
                    count,
                    dataset,
                    weight,
                }
            }),
        Just(InferRequest::Jobs),
        any::<u64>().prop_map(|job| InferRequest::Output { job }),
        (text(), any::<u32>()).prop_map(|(model, size)| InferRequest::SetBatchSize { model, size }),
        (
            text(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(model, max_queue_delay_ms, p99_target_ms)| {
                InferRequest::SetBatchPolicy {
                    model,
                    max_queue_delay_ms,
                    p99_target_ms,
                }
            }),
        Just(InferRequest::Models),
        Just(InferRequest::Rates),
        Just(InferRequest::Latency),
        Just(InferRequest::Placement),
        (addr(), any::<u32>(), proptest::option::of(worker_figures())).prop_map(
            |(worker, wait_ms, figures)| InferRequest::Lease {
                worker,
                wait_ms,
                figures
            }
        ),
        (
            (addr(), any::<u64>(), any::<u64>()),
            vec(image_result(), 0..3),
            (any::<u64>(), any::<u64>(), any::<u32>()),
            proptest::option::of(text()),
        )
            .prop_map(
                |((worker, query, job), results, (queue_us, compute_us, batch_images), failed)| {
                    InferRequest::Complete {
                        worker,
                        query,
                        job,
                        results,
                        queue_us,
                        compute_us,
                        batch_images,
                        failed,
                    }
                }
            ),
        (addr(), text()).prop_map(|(worker, reason)| InferRequest::Unready { worker, reason }),
        any::<u64>().prop_map(|job| InferRequest::Cancel { job }),
        any::<u64>().prop_map(|job| InferRequest::Job { job }),
        any::<u64>().prop_map(|job| InferRequest::QueryTimes { job }),
    ]
}

fn job_detail() -> impl Strategy<Value = JobDetail> {
    let worker = (
        addr(),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u32>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(worker, (queries, images, errors), (in_flight, queue_ms, compute_ms))| {
                WorkerProgress {
                    worker,
                    queries,
                    images,
                    errors,
                    in_flight,
                    queue_ms,
                    compute_ms,
                }
            },
        );
    (job_info(), vec(worker, 0..3), vec(image_result(), 0..3)).prop_map(
        |(info, workers, errors)| JobDetail {
            info,
            workers,
            errors,
        },
    )
}

fn query_timing() -> impl Strategy<Value = QueryTiming> {
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(images, queue_us, compute_us, held_us)| QueryTiming {
            images,
            queue_us,
            compute_us,
            held_us,
        },
    )
}

fn infer_response() -> impl Strategy<Value = InferResponse> {
    prop_oneof![
        (any::<u64>(), any::<u32>())
            .prop_map(|(job, images)| InferResponse::Submitted { job, images }),
        vec(job_info(), 0..3).prop_map(InferResponse::Jobs),
        (job_info(), vec(image_result(), 0..3))
            .prop_map(|(job, results)| InferResponse::Output { job, results }),
        vec(model_info(), 0..3).prop_map(InferResponse::Models),
        vec(rate_info(), 0..3).prop_map(InferResponse::Rates),
        vec(latency_info(), 0..3).prop_map(InferResponse::Latency),
        vec(placement(), 0..3).prop_map(InferResponse::Placement),
        proptest::option::of(batched_lease()).prop_map(InferResponse::Lease),
        any::<u32>().prop_map(|new| InferResponse::Accepted { new }),
        Just(InferResponse::Done),
        (any::<u64>(), any::<u32>())
            .prop_map(|(job, released)| InferResponse::Cancelled { job, released }),
        job_detail().prop_map(|d| InferResponse::Job(Box::new(d))),
        (any::<u64>(), vec(query_timing(), 0..3))
            .prop_map(|(job, queries)| InferResponse::QueryTimes { job, queries }),
    ]
}

// ---------------------------------------------------------------- API

fn member_state() -> impl Strategy<Value = MemberState> {
    prop_oneof![
        Just(MemberState::Alive),
        Just(MemberState::Suspect),
        Just(MemberState::Failed),
        Just(MemberState::Left),
    ]
}

fn member_info() -> impl Strategy<Value = MemberInfo> {
    (
        node(),
        member_state(),
        any::<u32>(),
        proptest::option::of(any::<u64>()),
        vec(node(), 0..3),
    )
        .prop_map(
            |(id, state, incarnation, last_heard_ms, monitors)| MemberInfo {
                id,
                state,
                incarnation,
                last_heard_ms,
                monitors,
            },
        )
}

fn stats() -> impl Strategy<Value = Stats> {
    (
        (any::<u64>(), num(), num(), num(), num()),
        vec(any::<u64>(), 17),
    )
        .prop_map(|((uptime_ms, bs, br, ps, pr), c)| Stats {
            uptime_ms,
            bytes_sent_per_s: bs,
            bytes_recv_per_s: br,
            packets_sent_per_s: ps,
            packets_recv_per_s: pr,
            bytes_sent: c[0],
            bytes_recv: c[1],
            packets_sent: c[2],
            packets_recv: c[3],
            probes_sent: c[4],
            suspicions: c[5],
            refuted: c[6],
            declared_failed: c[7],
            false_failures: c[8],
            bad_packets: c[9],
            bad_frames: c[10],
            members_live: c[11] ^ c[12],
            udp_unauthenticated: c[13],
            udp_replayed: c[14],
            tcp_unauthenticated: c[15],
            reinstated: c[16],
        })
}

fn leader_info() -> impl Strategy<Value = LeaderInfo> {
    (
        proptest::option::of(addr()),
        any::<u64>(),
        addrs(),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of("[0-9a-f]{16}"),
    )
        .prop_map(
            |(leader, term, voters, is_voter, last_applied, applied_digest)| LeaderInfo {
                leader,
                term,
                voters,
                is_voter,
                last_applied,
                applied_digest,
                unacked_ms: None,
                raft_ids: Vec::new(),
            },
        )
}

fn node_stats() -> impl Strategy<Value = NodeStats> {
    (
        proptest::option::of(addr()),
        num32(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(addr, cpu_percent, rss_bytes, sdfs_bytes, sdfs_versions, queries_running, age_ms)| {
                NodeStats {
                    addr,
                    cpu_percent,
                    rss_bytes,
                    sdfs_bytes,
                    sdfs_versions,
                    queries_running,
                    age_ms,
                }
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    let health = (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
        (
            any::<u64>(),
            vec((text(), any::<u64>(), any::<u32>()), 0..3),
            any::<[u64; 5]>(),
            any::<[u64; 5]>(),
        ),
    )
        .prop_map(
            |(
                (files, versions, bytes, replicas),
                (under_replicated, under_replicated_sample, [p, b, f, c, r], [bp, bb, bf, bm, bmb]),
            )| SdfsHealth {
                files,
                versions,
                bytes,
                replicas,
                under_replicated,
                under_replicated_sample,
                repair: RepairProgress {
                    pending_copies: p,
                    pending_bytes: b,
                    in_flight: f,
                    copies_per_sec: c,
                    bytes_per_sec: r,
                },
                balance: BalanceProgress {
                    pending_moves: bp,
                    pending_bytes: bb,
                    in_flight: bf,
                    moved: bm,
                    moved_bytes: bmb,
                },
            },
        );
    let figures = (
        remote_err_or(vec(model_info(), 0..2)),
        remote_err_or(vec(rate_info(), 0..2)),
        remote_err_or(vec(latency_info(), 0..2)),
        remote_err_or(vec(job_info(), 0..2)),
        remote_err_or(vec(placement(), 0..2)),
        remote_err_or(health),
    )
        .prop_map(
            |(models, rates, latency, jobs, placement, sdfs)| ClusterFigures {
                models,
                rates,
                latency,
                jobs,
                placement,
                sdfs,
            },
        );
    let kind = prop_oneof![
        Just(EventKind::Join),
        Just(EventKind::Leave),
        Just(EventKind::Failure),
        Just(EventKind::Suspect),
        Just(EventKind::Refuted),
        Just(EventKind::Rejoin),
        Just(EventKind::LeaderChange),
        Just(EventKind::Repair),
        Just(EventKind::JobStart),
        Just(EventKind::JobFinish),
        Just(EventKind::Info),
    ];
    let event =
        (any::<u64>(), any::<u64>(), kind, text()).prop_map(|(seq, unix_ms, kind, text)| {
            TelemetryEvent {
                seq,
                unix_ms,
                kind,
                text,
            }
        });
    (
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(node()),
            any::<u64>(),
            any::<bool>(),
        ),
        proptest::option::of(leader_info()),
        vec(member_info(), 0..3),
        vec(node_stats(), 0..3),
        proptest::option::of(figures),
        vec(event, 0..3),
    )
        .prop_map(
            |((seq, unix_ms, agent, dropped, resync), leader, members, nodes, cluster, events)| {
                Frame {
                    seq,
                    unix_ms,
                    agent,
                    dropped,
                    resync,
                    leader,
                    members,
                    nodes,
                    cluster,
                    events,
                }
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Id),
        Just(Request::Members),
        Just(Request::Stats),
        Just(Request::Join),
        Just(Request::Leave),
        Just(Request::Leader),
        (control_request(), any::<bool>())
            .prop_map(|(req, leader_only)| Request::Control { req, leader_only }),
        data_request().prop_map(Request::Data),
        bytes().prop_map(Request::Raft),
        Just(Request::Subscribe),
        Just(Request::NodeStats),
        keyring_request().prop_map(Request::Keyring),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (node(), any::<u32>(), any::<bool>()).prop_map(|(id, incarnation, joined)| {
            Response::Id(IdInfo {
                id,
                incarnation,
                joined,
            })
        }),
        vec(member_info(), 0..4).prop_map(Response::Members),
        stats().prop_map(Response::Stats),
        Just(Response::Ok),
        (0..dml_shared::ErrorKind::ALL.len(), text()).prop_map(|(k, m)| Response::Error(
            dml_shared::RemoteError::new(dml_shared::ErrorKind::ALL[k], m)
        )),
        leader_info().prop_map(Response::Leader),
        control_response().prop_map(Response::Control),
        (addrs(), vec((addr(), text()), 0..3))
            .prop_map(|(holders, failed)| Response::Stored { holders, failed }),
        vec(stored_file(), 0..3).prop_map(Response::StoredBatch),
        (any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(size, checksum)| Response::ReadStart { size, checksum }),
        vec(holding(), 0..4).prop_map(Response::Holdings),
        bytes().prop_map(Response::Raft),
        proptest::option::of(addr()).prop_map(|leader| Response::NotLeader { leader }),
        frame().prop_map(|f| Response::Telemetry(Box::new(f))),
        node_stats().prop_map(Response::NodeStats),
        keyring_response().prop_map(Response::Keyring),
    ]
}

// ---------------------------------------------------------------- checks

/// `v` round-trips behind `kind`; no other kind accepts it; no strict prefix decodes.
fn round_trips<T>(kind: Kind, v: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = wire::encode(kind, v);
    let back: T = wire::decode(kind, &bytes)
        .map_err(|e| TestCaseError::fail(format!("{v:?} does not decode: {e}")))?;
    prop_assert_eq!(&back, v);
    for other in [Kind::Gossip, Kind::Request, Kind::Response] {
        if other != kind {
            let is_bad_kind =
                matches!(wire::decode::<T>(other, &bytes), Err(Error::BadKind { .. }));
            prop_assert!(is_bad_kind, "kind {:?} accepted as {:?}", kind, other);
        }
    }
    // Every cut for short encodings, else a spread of them.
    let step = (bytes.len() / 64).max(1);
    for cut in (0..bytes.len()).step_by(step) {
        prop_assert!(
            wire::decode::<T>(kind, &bytes[..cut]).is_err(),
            "a {}-byte prefix of {} decoded",
            cut,
            bytes.len()
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    prop_assert!(wire::decode::<T>(kind, &long).is_err());
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Reads frames until the stream ends or fails.
async fn read_all(mut r: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<Error>) {
    let mut out = Vec::new();
    loop {
        match read_frame(&mut r, max).await {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

async fn write_all(frames: &[Vec<u8>], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        write_frame(&mut out, f, max)
            .await
            .expect("within the limit");
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip(r in request()) {
        round_trips(Kind::Request, &r)?;
    }

    #[test]
    fn responses_round_trip(r in response()) {
        round_trips(Kind::Response, &r)?;
    }

    #[test]
    fn meta_messages_round_trip(q in meta_request(), a in meta_response()) {
        round_trips(Kind::Request, &q)?;
        round_trips(Kind::Response, &a)?;
    }

    #[test]
    fn infer_messages_round_trip(q in infer_request(), a in infer_response()) {
        round_trips(Kind::Request, &q)?;
        round_trips(Kind::Response, &a)?;
    }

    #[test]
    fn data_requests_and_telemetry_frames_round_trip(q in data_request(), f in frame()) {
        round_trips(Kind::Request, &q)?;
        round_trips(Kind::Response, &f)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(b in vec(any::<u8>(), 0..256), kind in 1u8..=3) {
        // A valid header in front, so the payload decoders are reached.
        let mut framed = vec![0xD3, 0x4C, wire::PROTOCOL_VERSION, kind];
        framed.extend_from_slice(&b);
        for bytes in [&b[..], &framed[..]] {
            let _ = wire::decode::<Request>(Kind::Request, bytes);
            let _ = wire::decode::<Response>(Kind::Response, bytes);
            let _ = wire::decode::<MetaRequest>(Kind::Request, bytes);
            let _ = wire::decode::<InferResponse>(Kind::Response, bytes);
        }
    }

    #[test]
    fn any_sequence_of_frames_round_trips(frames in vec(vec(any::<u8>(), 0..300), 0..8)) {
        let stream = block_on(write_all(&frames, 1024));
        prop_assert_eq!(stream.len(), frames.iter().map(|f| f.len() + 4).sum::<usize>());
        let (back, err) = block_on(read_all(&stream, 1024));
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(back, frames);
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_panic(
        frames in vec(vec(any::<u8>(), 0..300), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let stream = block_on(write_all(&frames, 1024));
        let cut = cut.index(stream.len());
        // Frame boundaries: a cut there is a clean end after that many frames.
        let mut bounds = vec![0];
        for f in &frames {
            bounds.push(bounds.last().unwrap() + f.len() + 4);
        }
        let (back, err) = block_on(read_all(&stream[..cut], 1024));
        match bounds.iter().position(|b| *b == cut) {
            Some(n) => {
                prop_assert!(err.is_none(), "cut at a boundary: {:?}", err);
                prop_assert_eq!(&back[..], &frames[..n]);
            }
            None => {
                let n = bounds.iter().filter(|b| **b < cut).count() - 1;
                prop_assert!(
                    matches!(err, Some(Error::Io(_))),
                    "cut at {} inside frame {}: {:?}", cut, n, err
                );
                prop_assert_eq!(&back[..], &frames[..n]);
            }
        }
    }

    #[test]
    fn oversize_frames_are_refused(len in 65usize..10_000, max in 0usize..65) {
        let body = vec![7u8; len];
        let mut out = Vec::new();
        let w = block_on(write_frame(&mut out, &body, max));
        let is_too_large = matches!(w, Err(Error::FrameTooLarge { .. }));
        prop_assert!(is_too_large, "{:?}", w);
        prop_assert!(out.is_empty(), "nothing is written");
        // A prefix announcing `len` is refused before the body is read.
        let announced = (len as u32).to_be_bytes();
        let r = block_on(read_frame(&mut &announced[..], max));
        let refused = matches!(r, Err(Error::FrameTooLarge { len: l, max: m }) if l == len && m == max);
        prop_assert!(refused, "{:?}", r);
    }

    #[test]
    fn arbitrary_streams_never_panic_the_frame_reader(b in vec(any::<u8>(), 0..512), max in 0usize..256) {
        let (frames, _) = block_on(read_all(&b, max));
        prop_assert!(frames.iter().all(|f| f.len() <= max));
    }
}
