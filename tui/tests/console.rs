//! The console without a terminal: pure `App` state tests (events in, state
//! out), widget tests against a `Buffer`, and whole-screen insta snapshots on
//! a `TestBackend` at a fixed size and clock.

use dml_shared::telemetry::{EventKind, TelemetryEvent};
use dml_tui::console::app::{Action, App, ConnEvent, Event, Health, Input, JobSort, More};
use dml_tui::console::layout::{self, Pane};
use dml_tui::console::{draw, panes, synth};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::Rect;

/// The fixed clock of every test: ten minutes after the synthetic cluster started.
const NOW: u64 = synth::T0 + 600_000;

fn key(c: KeyCode) -> Event {
    Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn ch(c: char) -> Event {
    key(KeyCode::Char(c))
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        assert_eq!(app.handle(ch(c)), None);
    }
}

/// An app connected to member 0 of an `n`-member synthetic cluster, a few frames in.
fn app(n: usize, size: (u16, u16)) -> App {
    let mut a = App::new(synth::addr(0), NOW, size);
    a.handle(Event::Conn(ConnEvent::Connected(synth::addr(0))));
    for tick in 0..4 {
        a.handle(Event::Frame(Box::new(synth::frame(n, tick))));
    }
    a.handle(Event::Tick(NOW + 300));
    a
}

fn screen(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw::draw(f, app)).unwrap();
    t
}

fn text(buf: &Buffer) -> String {
    let mut s = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

mod state {
    use super::*;

    #[test]
    fn tab_and_hjkl_move_focus_and_selection_stays_in_bounds() {
        let mut a = app(10, (100, 30));
        assert_eq!(a.focus, Pane::Members);
        a.handle(key(KeyCode::Tab));
        assert_eq!(a.focus, Pane::Models);
        a.handle(key(KeyCode::BackTab));
        a.handle(ch('h'));
        assert_eq!(a.focus, Pane::Events);
        a.handle(ch('l'));
        assert_eq!(a.focus, Pane::Members);
        for _ in 0..25 {
            a.handle(ch('j'));
        }
        assert_eq!(a.selected[Pane::Members as usize], 9);
        a.handle(ch('k'));
        a.handle(key(KeyCode::Up));
        assert_eq!(a.selected[Pane::Members as usize], 7);
        a.handle(ch('g'));
        assert_eq!(a.selected[Pane::Members as usize], 0);
        a.handle(ch('G'));
        assert_eq!(a.selected[Pane::Members as usize], 9);
    }

    #[test]
    fn slash_filters_the_focused_pane_and_esc_clears_it() {
        let mut a = app(1000, (200, 60));
        assert_eq!(a.members().len(), 1000);
        a.handle(ch('/'));
        typed(&mut a, "suspect");
        assert!(matches!(a.input, Some(Input::Filter(_))));
        let suspects = a.members().len();
        assert!(suspects > 0 && suspects < 20, "{suspects} suspects");
        assert!(a.members().iter().all(|m| m.state.as_str() == "suspect"));
        a.handle(key(KeyCode::Enter));
        assert_eq!(a.input, None);
        assert_eq!(a.filters[Pane::Members as usize], "suspect");
        a.handle(key(KeyCode::Esc));
        assert_eq!(a.members().len(), 1000);
        // Filtering by address finds one member among a thousand.
        a.handle(ch('/'));
        typed(&mut a, "127.0.0.1:8500");
        assert_eq!(a.members().len(), 1);
    }

    #[test]
    fn plus_and_minus_on_models_ask_for_the_next_batch_size() {
        let mut a = app(10, (100, 30));
        assert_eq!(a.handle(ch('+')), None, "+ only acts on the models pane");
        a.handle(key(KeyCode::Tab));
        assert_eq!(
            a.handle(ch('+')),
            Some(Action::SetBatchSize {
                model: "resnet50".into(),
                size: 9
            })
        );
        a.handle(ch('j'));
        assert_eq!(
            a.handle(ch('-')),
            Some(Action::SetBatchSize {
                model: "inceptionv3".into(),
                size: 3
            })
        );
    }

    #[test]
    fn b_takes_a_typed_batch_size_and_refuses_nonsense() {
        let mut a = app(10, (100, 30));
        a.handle(key(KeyCode::Tab));
        a.handle(ch('b'));
        assert_eq!(
            a.input,
            Some(Input::BatchSize {
                model: "resnet50".into(),
                text: "8".into()
            })
        );
        a.handle(key(KeyCode::Backspace));
        typed(&mut a, "16");
        assert_eq!(
            a.handle(key(KeyCode::Enter)),
            Some(Action::SetBatchSize {
                model: "resnet50".into(),
                size: 16
            })
        );
        a.handle(ch('b'));
        typed(&mut a, "x");
        assert_eq!(a.handle(key(KeyCode::Enter)), None);
        let m = a.message.as_ref().unwrap();
        assert!(!m.ok && m.text.contains("\"8x\""), "{}", m.text);
    }

    #[test]
    fn s_opens_a_form_that_submits_a_job() {
        let mut a = app(10, (100, 30));
        a.handle(ch('s'));
        let ctrl_u = Event::Key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        a.handle(ctrl_u);
        typed(&mut a, "resnet50");
        a.handle(key(KeyCode::Tab));
        for _ in 0..3 {
            a.handle(key(KeyCode::Backspace));
        }
        typed(&mut a, "42");
        assert_eq!(
            a.handle(key(KeyCode::Enter)),
            Some(Action::Submit {
                model: "resnet50".into(),
                count: 42,
                dataset: "datasets/sample/".into()
            })
        );
    }

    #[test]
    fn x_cancels_the_selected_job_only_while_it_runs() {
        let mut a = app(10, (100, 30));
        a.handle(key(KeyCode::Tab));
        a.handle(key(KeyCode::Tab));
        assert_eq!(a.focus, Pane::Jobs);
        assert_eq!(a.selected_job().unwrap().id, 3);
        assert_eq!(
            a.handle(ch('x')),
            Some(Action::Command(vec!["cancel".into(), "3".into()]))
        );
        // A finished job: the console says why and sends nothing.
        a.handle(ch('G'));
        assert_eq!(a.selected_job().unwrap().id, 1);
        assert_eq!(a.handle(ch('x')), None);
        let m = a.message.clone().unwrap();
        assert!(!m.ok && m.text.contains("job 1 is done"), "{m:?}");
        // A read-only credential is told it may not.
        a.read_only = true;
        a.handle(ch('g'));
        assert_eq!(a.handle(ch('x')), None);
        let m = a.message.clone().unwrap();
        assert!(m.text.contains("cannot cancel jobs"), "{m:?}");
    }

    #[test]
    fn colon_runs_a_cli_command_line_with_quotes() {
        let mut a = app(10, (100, 30));
        a.handle(ch(':'));
        typed(&mut a, "put 'my file.txt' docs/a.txt");
        assert_eq!(
            a.handle(key(KeyCode::Enter)),
            Some(Action::Command(vec![
                "put".into(),
                "my file.txt".into(),
                "docs/a.txt".into()
            ]))
        );
        a.handle(ch(':'));
        typed(&mut a, "ls 'unclosed");
        assert_eq!(a.handle(key(KeyCode::Enter)), None);
        assert!(!a.message.as_ref().unwrap().ok);
    }

    #[test]
    fn enter_on_a_member_shows_it_in_full() {
        let mut a = app(10, (100, 30));
        a.handle(ch('j'));
        // It shows at once, and asks that member for its log's tail.
        let action = a.handle(key(KeyCode::Enter));
        let m = a.message.as_ref().expect("a popup");
        assert_eq!(m.text, format!("member {} (Esc closes)", synth::addr(1)));
        let d = m.detail.as_deref().unwrap();
        for want in [
            "alive, incarnation 1, voter",
            "probed by ",
            "cpu ",
            "SDFS ",
            "log: asking",
        ] {
            assert!(d.contains(want), "no {want:?} in\n{d}");
        }
        match action {
            Some(Action::Details {
                title,
                more: More::Log(from),
                ..
            }) => {
                assert_eq!(from, synth::addr(1));
                assert_eq!(title, format!("member {}", synth::addr(1)));
            }
            other => panic!("wanted the log's tail asked for, got {other:?}"),
        }
        a.handle(key(KeyCode::Esc));
        assert!(a.message.as_ref().is_none_or(|m| m.detail.is_none()));
        // L: that member's log, through `dml logs`.
        assert_eq!(
            a.handle(ch('L')),
            Some(Action::Command(
                ["--agent", &synth::addr(1).to_string(), "logs", "-n", "200"]
                    .map(String::from)
                    .to_vec()
            ))
        );
    }

    #[test]
    fn enter_on_sdfs_lists_files_and_enter_on_a_file_shows_its_versions_and_holders() {
        use dml_shared::sdfs::FileInfo;
        use dml_shared::version::VersionInfo;
        let mut a = app(4, (120, 40));
        a.focus = Pane::Sdfs;
        assert_eq!(a.handle(key(KeyCode::Enter)), Some(Action::Files));
        let v = |version, size, holders: &[usize]| VersionInfo {
            version,
            size,
            checksum: [0xab; 32],
            replicas: holders.iter().map(|&i| synth::addr(i)).collect(),
            committed_ms: NOW - 5_000,
        };
        a.handle(Event::Files(Ok(vec![
            FileInfo {
                name: "data/cat.jpg".into(),
                versions: vec![v(1, 1000, &[0, 1]), v(2, 2048, &[1, 2, 3])],
            },
            FileInfo {
                name: "data/dog.jpg".into(),
                versions: vec![v(1, 5, &[0])],
            },
        ])));
        assert_eq!(a.rows(Pane::Sdfs), 2);
        let s = text(screen(&a, 120, 40).backend().buffer());
        assert!(
            s.contains("data/cat.jpg") && s.contains("data/dog.jpg"),
            "{s}"
        );
        // The filter narrows the list; Enter shows the one left.
        a.handle(ch('/'));
        typed(&mut a, "cat");
        a.handle(key(KeyCode::Enter));
        assert_eq!(a.rows(Pane::Sdfs), 1);
        a.handle(key(KeyCode::Enter));
        let m = a.message.as_ref().expect("a popup");
        assert_eq!(m.text, "file data/cat.jpg (Esc closes)");
        let d = m.detail.as_deref().unwrap();
        assert!(
            d.starts_with("data/cat.jpg: 2 versions, newest first\nv2 2.0 KiB"),
            "{d}"
        );
        assert!(
            d.contains(&format!(
                "on 3 holders: {}, {}, {}",
                synth::addr(1),
                synth::addr(2),
                synth::addr(3)
            )),
            "{d}"
        );
        assert!(
            d.contains("abababababab…") && d.contains("(5.3s ago)"),
            "{d}"
        );
        // Esc closes the popup, then clears the filter, then goes back to the nodes.
        a.handle(key(KeyCode::Esc));
        a.handle(key(KeyCode::Esc));
        assert!(a.files.is_some());
        a.handle(key(KeyCode::Esc));
        assert!(a.files.is_none());
        assert_eq!(a.rows(Pane::Sdfs), 4);
    }

    #[test]
    fn o_sorts_the_jobs_by_state_progress_and_model() {
        use dml_shared::infer::JobState;
        let mut a = app(10, (120, 36));
        a.focus = Pane::Jobs;
        let order = |a: &App| a.jobs().iter().map(|j| j.id).collect::<Vec<_>>();
        let newest = order(&a);
        assert!(newest.windows(2).all(|w| w[0] > w[1]), "{newest:?}");
        for want in [
            JobSort::State,
            JobSort::Progress,
            JobSort::Model,
            JobSort::Newest,
        ] {
            a.handle(ch('o'));
            assert_eq!(a.job_sort, want);
        }
        assert_eq!(order(&a), newest);
        a.handle(ch('o'));
        let states: Vec<_> = a.jobs().iter().map(|j| j.state).collect();
        let running = states
            .iter()
            .take_while(|s| **s == JobState::Running)
            .count();
        assert!(
            states[running..].iter().all(|s| *s != JobState::Running),
            "{states:?}"
        );
        a.handle(ch('o'));
        let done: Vec<f64> = a
            .jobs()
            .iter()
            .map(|j| f64::from(j.done) / f64::from(j.images.max(1)))
            .collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
        let s = text(screen(&a, 120, 36).backend().buffer());
        assert!(s.contains("by progress (o)"), "{s}");
    }

    #[test]
    fn a_long_popup_scrolls_and_a_log_opens_at_its_newest_line() {
        let mut a = app(3, (80, 24));
        let log: Vec<String> = (1..=100).map(|i| format!("line {i}")).collect();
        a.handle(Event::Done {
            what: "--agent 127.0.0.1:8001 logs -n 200".into(),
            result: Ok(log.join("\n")),
        });
        let shown = |a: &App| text(screen(a, 80, 24).backend().buffer());
        let s = shown(&a);
        assert!(s.contains("line 100") && !s.contains("line 50 "), "{s}");
        assert!(s.contains("rows 79-100 of 100"), "{s}");
        a.handle(key(KeyCode::PageUp));
        let s = shown(&a);
        assert!(s.contains("line 57") && !s.contains("line 100"), "{s}");
        a.handle(ch('g'));
        assert!(shown(&a).contains("rows 1-22 of 100"));
        // Keys the popup does not take still reach the screen under it.
        a.handle(key(KeyCode::Esc));
        assert!(a.message.as_ref().is_none_or(|m| m.detail.is_none()));
    }

    #[test]
    fn o_sorts_the_members_by_the_next_column_largest_first() {
        let mut a = app(10, (100, 30));
        let order = |a: &App| {
            a.members()
                .iter()
                .map(|m| m.id.addr.port())
                .collect::<Vec<_>>()
        };
        let by_address = order(&a);
        assert!(by_address.windows(2).all(|w| w[0] < w[1]), "{by_address:?}");
        a.handle(ch('o'));
        a.handle(ch('o'));
        assert_eq!(a.member_sort.column(), "cpu");
        let f = a.frame.as_ref().unwrap();
        let cpu = |port: u16| {
            f.nodes
                .iter()
                .find(|n| n.addr.is_some_and(|x| x.port() == port))
                .map_or(-1.0, |n| n.cpu_percent)
        };
        let cpus: Vec<f32> = order(&a).into_iter().map(cpu).collect();
        assert!(cpus.windows(2).all(|w| w[0] >= w[1]), "{cpus:?}");
        assert_ne!(order(&a), by_address);
        for _ in 0..3 {
            a.handle(ch('o'));
        }
        assert_eq!(order(&a), by_address, "back to the address order");
    }

    #[test]
    fn colon_completes_command_names_and_recalls_earlier_lines() {
        let mut a = app(10, (100, 30));
        let line = |a: &App| match &a.input {
            Some(Input::Command(t)) => t.clone(),
            other => panic!("not on the command line: {other:?}"),
        };
        a.handle(ch(':'));
        typed(&mut a, "ls-a");
        a.handle(key(KeyCode::Tab));
        assert_eq!(line(&a), "ls-all ");
        typed(&mut a, "'*'");
        let ls = Some(Action::Command(vec!["ls-all".into(), "*".into()]));
        assert_eq!(a.handle(key(KeyCode::Enter)), ls);
        a.handle(ch(':'));
        typed(&mut a, "ge");
        a.handle(key(KeyCode::Tab));
        assert_eq!(line(&a), "get", "the prefix the choices share");
        let shown = &a.message.as_ref().unwrap().text;
        assert!(
            shown.contains("get-versions") && shown.contains("get-output"),
            "{shown}"
        );
        typed(&mut a, "-output 3");
        a.handle(key(KeyCode::Enter));
        // Up walks back through what ran, Down forward to an empty line.
        a.handle(ch(':'));
        a.handle(key(KeyCode::Up));
        assert_eq!(line(&a), "get-output 3");
        a.handle(key(KeyCode::Up));
        assert_eq!(line(&a), "ls-all '*'");
        a.handle(key(KeyCode::Up));
        assert_eq!(line(&a), "ls-all '*'", "the oldest stays");
        a.handle(key(KeyCode::Down));
        assert_eq!(line(&a), "get-output 3");
        a.handle(key(KeyCode::Down));
        assert_eq!(line(&a), "");
        a.handle(key(KeyCode::Up));
        assert_eq!(
            a.handle(key(KeyCode::Enter)),
            Some(Action::Command(vec!["get-output".into(), "3".into()]))
        );
    }

    #[test]
    fn results_show_in_place_and_long_ones_in_a_popup_until_esc() {
        let mut a = app(10, (100, 30));
        a.handle(Event::Done {
            what: "ls x".into(),
            result: Err(dml_shared::RemoteError::new(
                dml_shared::ErrorKind::NotFound,
                "no such SDFS file \"x\"",
            )),
        });
        let m = a.message.clone().unwrap();
        assert!(!m.ok && m.text.contains("ls x") && m.detail.is_none());
        a.handle(Event::Done {
            what: "members".into(),
            result: Ok("2 members\na\nb".into()),
        });
        assert!(a.message.as_ref().unwrap().detail.is_some());
        a.handle(key(KeyCode::Esc));
        assert_eq!(a.message, None);
    }

    #[test]
    fn a_read_only_credential_sees_its_refusal_and_then_steering_keys_say_why() {
        let mut a = app(10, (120, 30));
        a.handle(key(KeyCode::Tab));
        assert_eq!(a.focus, Pane::Models);
        assert!(matches!(
            a.handle(ch('+')),
            Some(Action::SetBatchSize { .. })
        ));
        a.handle(Event::Done {
            what: "set-batch-size resnet50 9".into(),
            result: Err(dml_shared::RemoteError::new(
                dml_shared::ErrorKind::Refused,
                "agent refused the request: a read-only credential cannot set-batch-size (needs an admin credential)",
            )),
        });
        let m = a.message.clone().unwrap();
        assert!(!m.ok && m.text.contains("cannot set-batch-size"), "{m:?}");
        assert!(a.read_only);
        for c in ['+', '-', 'b', 's'] {
            a.message = None;
            assert_eq!(a.handle(ch(c)), None, "{c}");
            assert_eq!(a.input, None, "{c}");
            let m = a.message.clone().unwrap();
            assert!(
                !m.ok && m.text.starts_with("read-only credential: cannot "),
                "{c}: {m:?}"
            );
            assert!(m.text.contains("(needs an admin credential)"), "{m:?}");
        }
        let t = text(screen(&a, 200, 30).backend().buffer());
        assert!(t.lines().next().unwrap().contains("│ read-only"), "{t}");
        let t = text(screen(&a, 120, 30).backend().buffer());
        assert!(t.lines().next().unwrap().contains("│ ro"), "{t}");
        // Views still work.
        a.handle(ch('j'));
        assert_eq!(a.selected[Pane::Models as usize], 1);
    }

    #[test]
    fn q_and_ctrl_c_quit_but_q_first_closes_help() {
        let mut a = app(10, (100, 30));
        a.handle(ch('?'));
        assert!(a.help);
        a.handle(ch('q'));
        assert!(!a.help && !a.quit);
        a.handle(ch('q'));
        assert!(a.quit);
        let mut a = app(10, (100, 30));
        a.handle(ch(':'));
        a.handle(Event::Key(KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
        )));
        assert!(a.quit, "Ctrl-C quits even while typing");
    }

    #[test]
    fn a_lost_agent_shows_reconnecting_until_frames_flow_from_the_next() {
        let mut a = app(10, (100, 30));
        a.handle(Event::Conn(ConnEvent::Lost {
            from: synth::addr(0),
            error: "connection reset".into(),
            next: synth::addr(1),
        }));
        assert_eq!(a.agent, synth::addr(1));
        assert!(matches!(a.health, Health::Reconnecting { from, .. } if from == synth::addr(0)));
        a.handle(Event::Conn(ConnEvent::Connected(synth::addr(1))));
        a.handle(Event::Frame(Box::new(synth::frame(10, 9))));
        assert_eq!(a.health, Health::Live);
        assert_eq!(a.switches.last().unwrap().0, synth::addr(0));
    }

    #[test]
    fn a_restarted_agent_counts_once_in_the_header() {
        let mut a = app(10, (100, 30));
        let (alive, total) = a.alive_total();
        let mut f = synth::frame(10, 5);
        // Agent 3's previous incarnation, failed, is still in the view.
        let mut old = f.members[3].clone();
        old.id = dml_shared::NodeId::new(old.id.addr, old.id.started - 1_000);
        old.state = dml_shared::api::MemberState::Failed;
        f.members.push(old);
        a.handle(Event::Frame(Box::new(f.clone())));
        assert_eq!(a.alive_total(), (alive, total));
        // Its newest incarnation failing is counted.
        f.members[3].state = dml_shared::api::MemberState::Failed;
        a.handle(Event::Frame(Box::new(f)));
        assert_eq!(a.alive_total(), (alive - 1, total));
    }

    #[test]
    fn events_are_not_repeated_and_a_resync_replaces_them() {
        let mut a = app(10, (100, 30));
        assert_eq!(a.events.len(), 7, "the tail arrives once");
        let mut f = synth::frame(10, 5);
        f.events = vec![TelemetryEvent {
            seq: 8,
            unix_ms: NOW,
            kind: EventKind::JobFinish,
            text: "job 2 done".into(),
        }];
        a.handle(Event::Frame(Box::new(f.clone())));
        a.handle(Event::Frame(Box::new(f.clone())));
        assert_eq!(a.events.len(), 8);
        assert_eq!(a.event_lines()[0].text, "job 2 done");
        f.resync = true;
        a.handle(Event::Frame(Box::new(f)));
        assert_eq!(a.events.len(), 1);
    }

    #[test]
    fn rate_history_keeps_one_sample_per_frame() {
        let a = app(10, (100, 30));
        assert_eq!(a.history["resnet50"].len(), 4);
        assert_eq!(a.history["resnet50"][1], 4.5);
    }

    #[test]
    fn a_click_focuses_a_pane_and_selects_the_row_under_it() {
        let mut a = app(10, (100, 30));
        let area = Rect::new(0, 0, 100, 30);
        let (_, jobs) = a
            .pane_rects(area)
            .into_iter()
            .find(|(p, _)| *p == Pane::Jobs)
            .unwrap();
        a.handle(Event::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: jobs.x + 3,
            row: jobs.y + 1 + layout::header_rows(Pane::Jobs) + 1,
            modifiers: KeyModifiers::NONE,
        }));
        assert_eq!(a.focus, Pane::Jobs);
        assert_eq!(a.selected[Pane::Jobs as usize], 1);
        assert_eq!(a.jobs()[1].id, 2);
    }
}

mod widgets {
    use super::*;

    fn pane(a: &App, p: Pane, w: u16, h: u16) -> String {
        let mut buf = Buffer::empty(Rect::new(0, 0, w, h));
        panes::render(a, p, buf.area, &mut buf);
        text(&buf)
    }

    #[test]
    fn the_models_table_shows_the_batch_a_p99_target_chose_and_plus_sets_the_largest() {
        let mut a = app(10, (100, 30));
        let mut f = synth::frame(10, 4);
        let models = f.cluster.as_mut().unwrap().models.as_mut().unwrap();
        models[0].p99_target_ms = Some(500);
        models[0].effective_batch = 4;
        a.handle(Event::Frame(Box::new(f)));
        let t = pane(&a, Pane::Models, 90, 6);
        let row = t.lines().find(|l| l.contains("resnet50")).unwrap();
        assert!(row.contains(" 4/8 "), "{t}");
        let row = t.lines().find(|l| l.contains("inceptionv3")).unwrap();
        assert!(!row.contains('/'), "{t}");
        a.handle(key(KeyCode::Tab));
        assert_eq!(
            a.handle(ch('+')),
            Some(Action::SetBatchSize {
                model: "resnet50".into(),
                size: 9
            }),
            "+ sets the largest batch"
        );
    }

    #[test]
    fn the_membership_table_shows_state_role_and_node_stats() {
        let a = app(10, (100, 30));
        let t = pane(&a, Pane::Members, 90, 14);
        assert!(t.contains("10 shown"), "{t}");
        let first = t.lines().find(|l| l.contains("127.0.0.1:8001")).unwrap();
        for want in ["alive", "leader", "%", "MiB"] {
            assert!(first.contains(want), "{want} missing in {first}");
        }
        let suspect = t.lines().find(|l| l.contains("127.0.0.1:8003")).unwrap();
        assert!(suspect.contains("voter"), "{suspect}");
    }

    #[test]
    fn a_thousand_members_scroll_to_the_selection() {
        let mut a = app(1000, (100, 30));
        a.handle(ch('G'));
        let t = pane(&a, Pane::Members, 90, 14);
        assert!(t.contains("127.0.0.1:9000"), "last member not shown:\n{t}");
        assert!(
            !t.contains("127.0.0.1:8001 "),
            "first member still shown:\n{t}"
        );
    }

    #[test]
    fn models_show_c2_and_a_sparkline_or_say_there_is_no_data() {
        let a = app(10, (100, 30));
        let t = pane(&a, Pane::Models, 100, 8);
        let row = t.lines().find(|l| l.contains("resnet50")).unwrap();
        for want in ["8", "180", "35", "170", "230", "260", "320"] {
            assert!(row.contains(want), "{want} missing in {row}");
        }
        assert!(row.contains('█'), "no sparkline in {row}");
        let mut a = App::new(synth::addr(0), NOW, (100, 30));
        let mut f = synth::frame(3, 0);
        let c = f.cluster.as_mut().unwrap();
        c.models = Err(dml_shared::RemoteError::new(
            dml_shared::ErrorKind::Unavailable,
            "inference is not available in this build",
        ));
        a.handle(Event::Frame(Box::new(f)));
        let t = pane(&a, Pane::Models, 100, 8);
        assert!(t.contains("no data: inference is not available"), "{t}");
    }

    #[test]
    fn jobs_show_progress_gauges_and_their_workers() {
        let a = app(10, (100, 30));
        let t = pane(&a, Pane::Jobs, 90, 8);
        let row = t.lines().find(|l| l.contains("#2")).unwrap();
        assert!(
            row.contains("150/400") && row.contains('█') && row.contains('░'),
            "{row}"
        );
        assert!(row.contains("8002×1") && row.contains("8005×1"), "{row}");
        let done = t.lines().find(|l| l.contains("#1")).unwrap();
        assert!(!done.contains('░'), "a done job's gauge is full: {done}");
    }

    /// Why job 2 of the synthetic cluster makes no progress.
    const STALL: &str = "no worker can run inceptionv3: ONNX Runtime is not loaded on 4 of 4 \
        workers (127.0.0.1:8002: cannot load /opt/ort/libonnxruntime.so: no such file)";

    /// An app whose frame has job 2 stalled (and, wrongly, the done job 1: not shown).
    fn stalled_app(size: (u16, u16)) -> App {
        let mut a = App::new(synth::addr(0), NOW, size);
        a.handle(Event::Conn(ConnEvent::Connected(synth::addr(0))));
        let mut f = synth::frame(10, 0);
        let jobs = f.cluster.as_mut().unwrap().jobs.as_mut().unwrap();
        jobs[0].stalled = Some("not shown for a done job".into());
        jobs[1].stalled = Some(STALL.into());
        a.handle(Event::Frame(Box::new(f)));
        a
    }

    #[test]
    fn a_stalled_job_says_why_in_yellow_where_its_workers_would_be() {
        let a = stalled_app((100, 30));
        let mut buf = Buffer::empty(Rect::new(0, 0, 90, 8));
        panes::render(&a, Pane::Jobs, buf.area, &mut buf);
        let t = text(&buf);
        assert!(t.contains("1 stalled"), "{t}");
        let (y, row) = t
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains("#2"))
            .unwrap();
        // The model has its column; the reason is cut to the room left.
        assert!(row.contains("ONNX Runtime is not loaded o…"), "{row}");
        assert!(!row.contains("8002×1"), "workers instead of why: {row}");
        let x = row.chars().take_while(|c| *c != 'O').count() as u16;
        assert_eq!(buf[(x, y as u16)].fg, ratatui::style::Color::Yellow);
        let running = t.lines().find(|l| l.contains("#3")).unwrap();
        assert!(running.contains("8003×2"), "{running}");
        let done = t.lines().find(|l| l.contains("#1")).unwrap();
        assert!(!done.contains("not shown"), "{done}");
    }

    #[test]
    fn enter_on_a_stalled_job_shows_why_in_full_until_esc() {
        let mut a = stalled_app((120, 36));
        a.handle(key(KeyCode::Tab));
        a.handle(key(KeyCode::Tab));
        assert_eq!(a.focus, Pane::Jobs);
        a.handle(ch('j'));
        assert_eq!(a.selected_job().unwrap().id, 2);
        // It shows at once, and asks for the per-worker figures (`dml job 2`).
        assert!(matches!(
            a.handle(key(KeyCode::Enter)),
            Some(Action::Details {
                more: More::Job(2),
                ..
            })
        ));
        let m = a.message.clone().unwrap();
        let detail = m.detail.unwrap();
        assert!(!m.ok && m.text.contains("job #2"), "{}", m.text);
        assert!(detail.contains(&format!("stalled: {STALL}")), "{detail}");
        // Every row of it is on the screen, in a popup as wide as the screen allows.
        let s = text(screen(&a, 120, 36).backend().buffer());
        for row in layout::wrap(&detail, 110) {
            assert!(s.contains(&row), "{row:?} missing:\n{s}");
        }
        assert!(detail.ends_with("workers: asking the leader…"), "{detail}");
        a.handle(key(KeyCode::Esc));
        assert_eq!(a.message, None);
        // A job that progresses has nothing to explain.
        a.handle(ch('k'));
        a.handle(key(KeyCode::Enter));
        let m = a.message.clone().unwrap();
        assert!(m.ok && !m.detail.unwrap().contains("stalled"));
    }

    #[test]
    fn popup_text_wraps_at_spaces_and_cuts_long_words() {
        assert_eq!(
            layout::wrap("aaa bbb cccccccc\n  x", 5),
            ["aaa", "bbb", "ccccc", "ccc", "  x"]
        );
    }

    #[test]
    fn sdfs_shows_health_and_repairs() {
        let a = app(10, (100, 30));
        let t = pane(&a, Pane::Sdfs, 60, 12);
        assert!(t.contains("1020 files, 1044 versions, 96 MiB"), "{t}");
        assert!(
            t.contains("repair ETA 3.0s: 2 left (3.0 MiB), 1/s (1.0 MiB/s)"),
            "{t}"
        );
        assert!(
            t.contains("2 under-replicated: datasets/sample/img-0007.jpg v1 (3/4)"),
            "{t}"
        );
    }

    #[test]
    fn sdfs_shows_balance_moves_when_no_repair_runs() {
        let mut a = app(10, (100, 30));
        let health = a
            .frame
            .as_mut()
            .and_then(|f| f.cluster.as_mut())
            .and_then(|c| c.sdfs.as_mut().ok())
            .expect("the synthetic frame has SDFS figures");
        health.repair = Default::default();
        let t = pane(&a, Pane::Sdfs, 80, 12);
        assert!(
            t.contains("balance: 40 moves left (120 MiB), 2 running, 12 done (36 MiB)"),
            "{t}"
        );
        assert!(!t.contains("no repair running"), "{t}");
        let health = a.frame.as_mut().unwrap().cluster.as_mut().unwrap();
        health.sdfs.as_mut().unwrap().balance = Default::default();
        let t = pane(&a, Pane::Sdfs, 80, 12);
        assert!(t.contains("4 copies each; no repair running"), "{t}");
    }

    #[test]
    fn every_pane_fits_at_80_by_24() {
        let a = app(10, (80, 24));
        let t = screen(&a, 80, 24);
        let s = text(t.backend().buffer());
        for title in [
            "Membership",
            "Models",
            "Jobs",
            "SDFS",
            "Events",
            "ldr 127.0.0.1:8001",
            "● 127.0.0.1:8001 live",
        ] {
            assert!(s.contains(title), "{title} missing at 80x24:\n{s}");
        }
    }
}

mod snapshots {
    use super::*;

    #[test]
    fn main_screen() {
        let a = app(10, (120, 36));
        insta::assert_snapshot!(screen(&a, 120, 36).backend());
    }

    #[test]
    fn help_overlay() {
        let mut a = app(10, (100, 30));
        a.handle(ch('?'));
        insta::assert_snapshot!(screen(&a, 100, 30).backend());
    }

    #[test]
    fn filtered_view() {
        let mut a = app(1000, (120, 36));
        a.handle(ch('/'));
        typed(&mut a, "127.0.0.1:85");
        insta::assert_snapshot!(screen(&a, 120, 36).backend());
    }
}
