//! The job queue on the tiny SD1 fixture (16 px, CPU): order, events, cancel and resume, a
//! process killed mid-run, DPO stages, seed-matched galleries, export and the error cases.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TempDir, fixture, save, sharp_photo};
use likeness_studio::{
    BaseModel, DeviceChoice, DpoSettings, DreamBoothSettings, GallerySettings, ImportOptions, Job,
    JobEvent, JobId, JobKind, JobRunner, JobStatus, LoraFormat, Precision, ProjectId, RunId,
    RunKind, StudioError, Workspace,
};

const MODEL: &str = "dreambooth/tiny_sd1_pretrained";
const WAIT: Duration = Duration::from_secs(300);

/// A workspace with a project of three photos and the tiny base model.
struct Setup {
    dir: TempDir,
    ws_dir: PathBuf,
    ws: Workspace,
    project: ProjectId,
    model: BaseModel,
}

fn setup(label: &str) -> Setup {
    let dir = TempDir::new(label);
    let ws_dir = dir.join("ws");
    let mut ws = Workspace::open(&ws_dir).unwrap();
    let project = ws.create_project("Rex", "sks", "dog").unwrap().id;
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let files: Vec<PathBuf> = (0..3)
        .map(|i| save(&photos, &format!("p{i}.png"), &sharp_photo(48, 48, i)))
        .collect();
    let opts = ImportOptions {
        min_side: 16,
        max_side: 48,
        ..Default::default()
    };
    let report = ws.import_photos(project, &files, &opts).unwrap();
    assert_eq!(report.imported.len(), 3, "{report:?}");
    let model = ws.add_base_model(&fixture(MODEL)).unwrap();
    Setup {
        dir,
        ws_dir,
        ws,
        project,
        model,
    }
}

/// A seconds-long DreamBooth run: `steps` steps at the model's 16 px.
fn quick(model: &BaseModel, steps: usize) -> DreamBoothSettings {
    DreamBoothSettings {
        steps,
        lr: 1e-3,
        sample_every: 0,
        checkpoint_every: 2,
        ..DreamBoothSettings::defaults_for(model)
    }
}

fn start(ws_dir: &Path) -> Arc<JobRunner> {
    Arc::new(JobRunner::start(ws_dir, DeviceChoice::Cpu, Precision::F32).unwrap())
}

/// Every event from now on.
fn record(runner: &JobRunner) -> Arc<Mutex<Vec<JobEvent>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    runner.subscribe(Box::new(move |e| sink.lock().unwrap().push(e.clone())));
    events
}

fn of_job(events: &Mutex<Vec<JobEvent>>, job: JobId) -> Vec<JobEvent> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.job_id() == job)
        .cloned()
        .collect()
}

fn wait(runner: &JobRunner, job: JobId) -> Job {
    let job = runner.wait(job, WAIT).unwrap();
    assert!(
        job.status.is_ended(),
        "job {} still {:?}",
        job.id,
        job.status
    );
    job
}

fn steps_of(events: &[JobEvent]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Step { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

fn loss_steps(ws: &Workspace, run: RunId) -> Vec<usize> {
    ws.loss_history(run)
        .unwrap()
        .iter()
        .map(|p| p.step)
        .collect()
}

#[test]
fn a_dreambooth_job_reports_its_steps_in_order_and_records_its_run() {
    let s = setup("db");
    let runner = start(&s.ws_dir);
    let events = record(&runner);
    let settings = DreamBoothSettings {
        sample_every: 3,
        ..quick(&s.model, 6)
    };
    let job = runner.submit_dreambooth(s.project, settings).unwrap();
    assert_eq!(
        (job.kind, job.status, job.total),
        (JobKind::Dreambooth, JobStatus::Queued, 6)
    );
    let run_id = job.run_id.expect("the run row is made at submit");
    let done = wait(&runner, job.id);
    assert_eq!(
        (done.status, done.step, done.total),
        (JobStatus::Done, 6, 6)
    );
    assert_eq!(done.message, None);

    let ev = of_job(&events, job.id);
    assert!(
        matches!(ev.first(), Some(JobEvent::Queued { .. })),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[1], JobEvent::Started { phase, total: 6, .. } if phase == "preparing"),
        "{ev:?}"
    );
    assert_eq!(
        ev.last(),
        Some(&JobEvent::Finished {
            job_id: job.id,
            run_id: Some(run_id)
        })
    );
    let training = ev
        .iter()
        .position(|e| matches!(e, JobEvent::Started { phase, .. } if phase == "training"))
        .expect("training starts");
    let first_step = ev
        .iter()
        .position(|e| matches!(e, JobEvent::Step { .. }))
        .unwrap();
    assert!(training < first_step);
    assert_eq!(steps_of(&ev), vec![1, 2, 3, 4, 5, 6]);
    for e in &ev {
        if let JobEvent::Step {
            loss,
            lr,
            total,
            eta_seconds,
            accuracy,
            ..
        } = e
        {
            assert!(loss.is_finite() && *lr > 0.0 && *total == 6, "{e:?}");
            assert!(eta_seconds.is_some_and(|s| s >= 0.0) && accuracy.is_none());
        }
    }
    // Previews before training and at steps 3 and 6, as workspace-relative paths.
    let previews: Vec<(usize, Vec<String>)> = ev
        .iter()
        .filter_map(|e| match e {
            JobEvent::Preview { step, images, .. } => Some((*step, images.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        previews.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![0, 3, 6]
    );
    for img in previews.iter().flat_map(|p| &p.1) {
        assert!(!img.starts_with('/') && !img.contains('\\'), "{img}");
        assert!(s.ws_dir.join(img).is_file(), "{img}");
    }

    let runs = s.ws.runs(s.project).unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(
        (run.id, run.kind, run.label.as_str(), run.status, run.steps),
        (
            run_id,
            RunKind::Dreambooth,
            "DreamBooth",
            JobStatus::Done,
            6
        )
    );
    let dir = s.ws.run_dir(run_id).unwrap();
    assert_eq!(
        dir,
        s.ws_dir
            .join(format!("projects/{}/runs/{run_id}-dreambooth", s.project))
    );
    assert!(dir.join("config.json").is_file() && dir.join("photos").is_dir());
    assert_eq!(loss_steps(&s.ws, run_id), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn jobs_run_one_at_a_time_in_the_order_submitted() {
    let s = setup("queue");
    let runner = start(&s.ws_dir);
    let events = record(&runner);
    let a = runner
        .submit_dreambooth(s.project, quick(&s.model, 2))
        .unwrap();
    let b = runner
        .submit_dreambooth(s.project, quick(&s.model, 2))
        .unwrap();
    let c = runner
        .submit_dreambooth(s.project, quick(&s.model, 2))
        .unwrap();
    // A queued job cancelled never runs.
    runner.cancel(c.id).unwrap();
    wait(&runner, b.id);
    assert_eq!(runner.job(a.id).unwrap().status, JobStatus::Done);
    assert_eq!(runner.job(b.id).unwrap().status, JobStatus::Done);
    assert_eq!(runner.job(c.id).unwrap().status, JobStatus::Cancelled);

    // Every event of a comes before any event of b past its Queued.
    let all = events.lock().unwrap().clone();
    let a_finished = all
        .iter()
        .position(|e| matches!(e, JobEvent::Finished { job_id, .. } if *job_id == a.id))
        .unwrap();
    let b_started = all
        .iter()
        .position(|e| matches!(e, JobEvent::Started { job_id, .. } if *job_id == b.id))
        .unwrap();
    assert!(a_finished < b_started, "{all:?}");
    let c_events = of_job(&events, c.id);
    assert_eq!(
        c_events,
        vec![
            JobEvent::Queued { job_id: c.id },
            JobEvent::Cancelled { job_id: c.id }
        ]
    );
    let jobs = runner.jobs().unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a.id, b.id, c.id]
    );
    let labels: Vec<String> =
        s.ws.runs(s.project)
            .unwrap()
            .into_iter()
            .map(|r| r.label)
            .collect();
    assert_eq!(labels, ["DreamBooth", "DreamBooth 2", "DreamBooth 3"]);
}

#[test]
fn a_cancelled_job_keeps_a_checkpoint_and_resumes_to_the_end() {
    let s = setup("cancel");
    let runner = start(&s.ws_dir);
    let events = record(&runner);
    // Cancel from the listener at step 3, so the stop is exact.
    let weak = Arc::downgrade(&runner);
    runner.subscribe(Box::new(move |e| {
        if let JobEvent::Step {
            job_id, step: 3, ..
        } = e
            && let Some(r) = weak.upgrade()
        {
            r.cancel(*job_id).unwrap();
        }
    }));
    let settings = DreamBoothSettings {
        checkpoint_every: 4,
        ..quick(&s.model, 6)
    };
    let job = runner.submit_dreambooth(s.project, settings).unwrap();
    let run = job.run_id.unwrap();
    let stopped = wait(&runner, job.id);
    assert_eq!((stopped.status, stopped.step), (JobStatus::Cancelled, 3));
    assert!(matches!(
        of_job(&events, job.id).last(),
        Some(JobEvent::Cancelled { .. })
    ));
    let dir = s.ws.run_dir(run).unwrap();
    assert!(dir.join("checkpoints/step-000003/state.json").is_file());
    assert_eq!(s.ws.run(run).unwrap().status, JobStatus::Cancelled);
    // A cancelled run exports where it stopped.
    let out = s.dir.join("cancelled.safetensors");
    let mut ws = Workspace::open(&s.ws_dir).unwrap();
    ws.export_lora(run, LoraFormat::Diffusers, &out).unwrap();

    let again = runner.resume(job.id).unwrap();
    assert_eq!(again.status, JobStatus::Queued);
    let done = wait(&runner, job.id);
    assert_eq!((done.status, done.step), (JobStatus::Done, 6));
    assert_eq!(loss_steps(&s.ws, run), vec![1, 2, 3, 4, 5, 6]);
    let resumed: Vec<usize> = steps_of(&of_job(&events, job.id));
    assert_eq!(
        resumed,
        vec![1, 2, 3, 4, 5, 6],
        "steps 4.. follow the resume"
    );
    assert_eq!(s.ws.run(run).unwrap().status, JobStatus::Done);

    let err = runner.resume(job.id).unwrap_err();
    assert!(
        matches!(err, StudioError::JobState { status: "done", .. }),
        "{err}"
    );
    let err = runner.cancel(job.id).unwrap_err();
    assert!(err.to_string().contains("is done"), "{err}");
}

#[test]
fn shutting_down_interrupts_the_running_job_and_keeps_the_queue() {
    let s = setup("shutdown");
    let runner = JobRunner::start(&s.ws_dir, DeviceChoice::Cpu, Precision::F32).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    runner.subscribe(Box::new(move |e| {
        if let JobEvent::Step { step: 2, .. } = e {
            let _ = tx.send(());
        }
    }));
    let long = runner
        .submit_dreambooth(s.project, quick(&s.model, 30))
        .unwrap();
    let next = runner
        .submit_dreambooth(s.project, quick(&s.model, 2))
        .unwrap();
    rx.recv_timeout(WAIT).unwrap();
    runner.shutdown();
    let stopped = s.ws.job(long.id).unwrap();
    assert_eq!(stopped.status, JobStatus::Interrupted);
    assert!(stopped.step >= 2, "{stopped:?}");
    let run = stopped.run_id.unwrap();
    let checkpoint = format!("checkpoints/step-{:06}/state.json", stopped.step);
    assert!(s.ws.run_dir(run).unwrap().join(checkpoint).is_file());
    assert_eq!(s.ws.job(next.id).unwrap().status, JobStatus::Queued);

    // The next start runs the queue; the interrupted job waits to be resumed.
    let runner = start(&s.ws_dir);
    assert_eq!(wait(&runner, next.id).status, JobStatus::Done);
    assert_eq!(runner.job(long.id).unwrap().status, JobStatus::Interrupted);
    runner.resume(long.id).unwrap();
    assert_eq!(wait(&runner, long.id).step, 30);
    assert_eq!(loss_steps(&s.ws, run), (1..=30).collect::<Vec<_>>());
}

/// The workspace the killed child trains in (set by the parent test only).
const CHILD_ENV: &str = "LIKENESS_STUDIO_KILLED_CHILD_WS";
const KILLED_STEPS: usize = 40;

/// Run as a child process by the next test: starts a long DreamBooth job and waits to be killed.
#[test]
fn child_process_trains_until_killed() {
    let Some(ws_dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let ws_dir = PathBuf::from(ws_dir);
    let ws = Workspace::open(&ws_dir).unwrap();
    let project = ws.projects().unwrap()[0].id;
    let model = ws.base_models().unwrap()[0].clone();
    let runner = start(&ws_dir);
    runner
        .submit_dreambooth(project, quick(&model, KILLED_STEPS))
        .unwrap();
    // Queued behind it when the process dies.
    runner.submit_dreambooth(project, quick(&model, 2)).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_job_killed_with_the_app_is_interrupted_and_resumes_with_a_continuous_loss_log() {
    let s = setup("killed");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            // Test names are paths from the suite's root.
            "jobs::child_process_trains_until_killed",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &s.ws_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let loss_log = s.ws_dir.join(format!(
        "projects/{}/runs/1-dreambooth/loss.jsonl",
        s.project
    ));
    let began = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&loss_log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= 5 {
            break;
        }
        assert!(
            began.elapsed() < WAIT,
            "the child made {lines} steps in time"
        );
        assert!(child.try_wait().unwrap().is_none(), "the child ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The dead process's lock is gone; its running job is now interrupted, and the job queued
    // behind it runs.
    let runner = start(&s.ws_dir);
    let jobs = runner.jobs().unwrap();
    assert_eq!(jobs.len(), 2);
    let job = &jobs[0];
    assert_eq!(job.status, JobStatus::Interrupted);
    assert_eq!(wait(&runner, jobs[1].id).status, JobStatus::Done);
    assert_eq!(runner.job(job.id).unwrap().status, JobStatus::Interrupted);
    assert!(job.step >= 2, "progress reached the database: {job:?}");
    let run = job.run_id.unwrap();
    assert_eq!(s.ws.run(run).unwrap().status, JobStatus::Interrupted);
    let killed_at = loss_steps(&s.ws, run).len();
    assert!((5..KILLED_STEPS).contains(&killed_at), "{killed_at}");

    runner.resume(job.id).unwrap();
    let done = wait(&runner, job.id);
    assert_eq!(
        (done.status, done.step),
        (JobStatus::Done, KILLED_STEPS),
        "{done:?}"
    );
    let steps = loss_steps(&s.ws, run);
    assert_eq!(steps, (1..=KILLED_STEPS).collect::<Vec<_>>());
    let checkpoints = s.ws.run_dir(run).unwrap().join("checkpoints");
    for entry in std::fs::read_dir(&checkpoints).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name.starts_with("step-"), "left over: {name}");
    }
}

#[test]
fn dpo_stages_from_a_dreambooth_run_then_a_seed_matched_gallery_of_every_model() {
    let mut s = setup("dpo");
    s.ws.set_clip_model(Some(&fixture("scoring/clip"))).unwrap();
    let runner = start(&s.ws_dir);
    let events = record(&runner);
    let db = runner
        .submit_dreambooth(s.project, quick(&s.model, 2))
        .unwrap();
    let db_run = db.run_id.unwrap();
    assert_eq!(wait(&runner, db.id).status, JobStatus::Done);
    let dpo = runner
        .submit_dpo(
            s.project,
            DpoSettings {
                stages: 2,
                prompts_per_stage: 2,
                samples_per_prompt: 2,
                // Of the two orderings of a pair exactly one points into the upper half-plane.
                angle_min: 0.0,
                angle_max: 180.0,
                steps: 2,
                lr: 1e-3,
                ..DpoSettings::defaults_for(&s.model, db_run)
            },
        )
        .unwrap();
    let done = wait(&runner, dpo.id);
    assert_eq!(
        (done.status, done.step, done.total),
        (JobStatus::Done, 4, 4),
        "{done:?}"
    );

    let runs = s.ws.runs(s.project).unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["DreamBooth", "DPO 1", "DPO 2"]);
    for r in &runs[1..] {
        assert_eq!(
            (r.kind, r.parent_run_id, r.status, r.steps),
            (RunKind::Dpo, Some(db_run), JobStatus::Done, 2)
        );
        assert_eq!(loss_steps(&s.ws, r.id), vec![1, 2]);
    }
    assert_eq!(done.run_id, Some(runs[2].id));
    let ev = of_job(&events, dpo.id);
    assert_eq!(
        steps_of(&ev),
        vec![1, 2, 3, 4],
        "steps count over the stages"
    );
    let candidates: Vec<(usize, usize, usize)> = ev
        .iter()
        .filter_map(|e| match e {
            JobEvent::Candidates {
                stage,
                points,
                pairs,
                ..
            } => Some((*stage, points.len(), pairs.len())),
            _ => None,
        })
        .collect();
    assert_eq!(candidates.len(), 2, "{ev:?}");
    assert_eq!((candidates[0].0, candidates[0].1), (1, 4));
    assert!(candidates.iter().all(|c| c.2 >= 1));
    assert!(
        ev.iter().any(
            |e| matches!(e, JobEvent::Step { accuracy: Some(a), .. } if (0.0..=1.0).contains(a))
        )
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        JobEvent::Phase { phase, total: 4, .. } if phase == "DPO stage 1: generating candidates"
    )));

    // A gallery of every model: the same 2 prompts × 2 seeds in each column.
    let columns = vec![None, Some(db_run), Some(runs[1].id), Some(runs[2].id)];
    let settings = GallerySettings {
        prompts: 2,
        seeds: 2,
        sample_steps: 4,
        ..GallerySettings::defaults_for(&s.model, columns.clone())
    };
    let gallery = runner
        .submit_gallery_with(s.project, settings.clone())
        .unwrap();
    assert_eq!(gallery.total, 16);
    let g = wait(&runner, gallery.id);
    assert_eq!((g.status, g.step), (JobStatus::Done, 16), "{g:?}");
    assert_eq!(
        of_job(&events, gallery.id).last(),
        Some(&JobEvent::Finished {
            job_id: gallery.id,
            run_id: None
        })
    );
    let table = s.ws.compare(s.project, &columns).unwrap();
    assert_eq!(table.prompts.len(), 2);
    assert!(table.prompts.iter().all(|p| p.contains("sks dog")));
    let labels: Vec<&str> = table.columns.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["Base model", "DreamBooth", "DPO 1", "DPO 2"]);
    assert_eq!(table.cells.len(), 16);
    for prompt in 0..2 {
        for column in 0..4 {
            let seeds: Vec<u64> = table
                .cells
                .iter()
                .filter(|c| c.prompt == prompt && c.column == column)
                .map(|c| c.seed)
                .collect();
            assert_eq!(seeds, vec![0, 1], "prompt {prompt} column {column}");
        }
    }
    for c in &table.cells {
        assert!(s.ws_dir.join(&c.image).is_file(), "{}", c.image);
        assert!(c.is.is_some_and(f32::is_finite) && c.ts.is_some_and(f32::is_finite));
    }
    let scatter = s.ws.scatter(s.project).unwrap();
    assert_eq!(scatter.len(), 4);
    assert_eq!(scatter[0].run_id, None);
    assert!(scatter.iter().all(|p| p.is.is_finite() && p.se_ts >= 0.0));

    // The same gallery again reuses every column: nothing is generated.
    let again = runner.submit_gallery_with(s.project, settings).unwrap();
    let again_done = wait(&runner, again.id);
    assert_eq!(again_done.status, JobStatus::Done);
    assert!(
        !of_job(&events, again.id)
            .iter()
            .any(|e| matches!(e, JobEvent::Phase { phase, .. } if phase.starts_with("generating"))),
    );

    // A DPO stage exports like a run.
    let out = s.dir.join("stage2.safetensors");
    let exported =
        s.ws.export_lora(runs[2].id, LoraFormat::Kohya, &out)
            .unwrap();
    let file = likeness_models::lora_files::open_lora_file(&exported.path).unwrap();
    assert_eq!(file.format, LoraFormat::Kohya);
    assert!(!file.set.layers.is_empty());
}

#[test]
fn a_base_model_gallery_without_clip_has_images_but_no_scores() {
    let s = setup("noclip");
    let runner = start(&s.ws_dir);
    let settings = GallerySettings {
        columns: vec![None],
        prompts: 1,
        seeds: 3,
        sample_steps: 2,
        guidance: 7.5,
    };
    let job = runner.submit_gallery_with(s.project, settings).unwrap();
    assert_eq!(wait(&runner, job.id).status, JobStatus::Done);
    let table = s.ws.compare(s.project, &[]).unwrap();
    assert_eq!(table.columns.len(), 1);
    assert_eq!(
        table.cells.iter().map(|c| c.seed).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(table.cells.iter().all(|c| c.is.is_none() && c.ts.is_none()));
    assert!(s.ws.scatter(s.project).unwrap().is_empty());
}

#[test]
fn export_writes_kohya_and_diffusers_files_that_read_back() {
    let mut s = setup("export");
    let runner = start(&s.ws_dir);
    let job = runner
        .submit_dreambooth(s.project, quick(&s.model, 2))
        .unwrap();
    assert_eq!(wait(&runner, job.id).status, JobStatus::Done);
    let run = job.run_id.unwrap();
    let trained =
        likeness_train::checkpoint::load_checkpoint_lora(&s.ws.run_dir(run).unwrap(), None)
            .unwrap();
    for format in [LoraFormat::Kohya, LoraFormat::Diffusers] {
        let out = s.dir.join(&format!("rex-{format}.safetensors"));
        let result = s.ws.export_lora(run, format, &out).unwrap();
        assert_eq!(result.path, out.canonicalize().unwrap());
        assert_eq!(result.bytes, std::fs::metadata(&out).unwrap().len());
        let file = likeness_models::lora_files::open_lora_file(&out).unwrap();
        assert_eq!(file.format, format);
        assert!(file.skipped.is_empty(), "{:?}", file.skipped);
        assert_eq!(file.set.layers.len(), trained.layers.len());
    }
    let conn = rusqlite::Connection::open(s.ws.db_path()).unwrap();
    let formats: Vec<String> = conn
        .prepare("SELECT format FROM exports WHERE run_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([run], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(formats, ["kohya", "diffusers"]);
    // A folder that does not exist is named in the error.
    let err =
        s.ws.export_lora(run, LoraFormat::Kohya, &s.dir.join("missing/x.safetensors"))
            .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn bad_requests_get_one_line_errors() {
    let mut s = setup("bad");
    let runner = start(&s.ws_dir);
    let one_line = |e: StudioError| {
        let m = e.to_string();
        assert!(!m.contains('\n') && !m.is_empty(), "{m}");
        m
    };
    let settings = quick(&s.model, 2);
    let e = runner.submit_dreambooth(999, settings.clone()).unwrap_err();
    assert!(
        matches!(
            e,
            StudioError::NotFound {
                what: "project",
                id: 999
            }
        ),
        "{e}"
    );
    let e = runner
        .submit_dreambooth(
            s.project,
            DreamBoothSettings {
                base_model_id: 77,
                ..settings.clone()
            },
        )
        .unwrap_err();
    assert!(one_line(e).contains("no base model with id 77"));
    let e = runner
        .submit_dreambooth(
            s.project,
            DreamBoothSettings {
                steps: 0,
                ..settings.clone()
            },
        )
        .unwrap_err();
    assert!(one_line(e).contains("steps"));
    let empty = s.ws.create_project("Empty", "zwx", "cat").unwrap().id;
    let e = runner
        .submit_dreambooth(empty, settings.clone())
        .unwrap_err();
    assert!(one_line(e).contains("no photos"));

    let dpo = DpoSettings::defaults_for(&s.model, RunId(55));
    let e = runner.submit_dpo(s.project, dpo.clone()).unwrap_err();
    assert!(
        matches!(
            e,
            StudioError::NotFound {
                what: "run",
                id: 55
            }
        ),
        "{e}"
    );
    // A DPO round needs a finished run, and CLIP for a model other than the built-in one.
    let job = runner.submit_dreambooth(s.project, settings).unwrap();
    let run = job.run_id.unwrap();
    let from = DpoSettings {
        from_run_id: run,
        ..dpo
    };
    if runner.job(job.id).unwrap().status != JobStatus::Done {
        let e = runner.submit_dpo(s.project, from.clone()).unwrap_err();
        assert!(one_line(e).contains("starts from a finished run"));
    }
    wait(&runner, job.id);
    let e = runner.submit_dpo(s.project, from.clone()).unwrap_err();
    assert!(one_line(e).contains("CLIP"));
    let e = runner
        .submit_dpo(
            s.project,
            DpoSettings {
                angle_min: 80.0,
                angle_max: 10.0,
                ..from.clone()
            },
        )
        .unwrap_err();
    assert!(one_line(e).contains("angle window"));
    let e = runner.submit_dpo(empty, from).unwrap_err();
    assert!(one_line(e).contains("belongs to project"));
    let e =
        s.ws.set_clip_model(Some(&fixture("pipeline_sd1_eps")))
            .unwrap_err();
    assert!(one_line(e).contains("config.json"));

    let e = runner.resume(job.id).unwrap_err();
    assert!(one_line(e).contains(&format!("job {} is done", job.id)));
    let e = runner.cancel(JobId(4242)).unwrap_err();
    assert!(
        matches!(e, StudioError::NotFound { what: "job", .. }),
        "{e}"
    );
    let e = runner.resume(JobId(4242)).unwrap_err();
    assert!(
        matches!(e, StudioError::NotFound { what: "job", .. }),
        "{e}"
    );
    let e = runner.submit_gallery(s.project, vec![]).unwrap_err();
    assert!(one_line(e).contains("at least one column"));
    let e = runner
        .submit_gallery(s.project, vec![Some(RunId(999))])
        .unwrap_err();
    assert!(
        matches!(e, StudioError::NotFound { what: "run", .. }),
        "{e}"
    );

    let e = s.ws.compare(s.project, &[None, Some(run)]).unwrap_err();
    assert!(one_line(e).contains("no seed-matched galleries of Base model, DreamBooth"));
    let e = s.ws.loss_history(RunId(999)).unwrap_err();
    assert!(
        matches!(e, StudioError::NotFound { what: "run", .. }),
        "{e}"
    );
    let e =
        s.ws.export_lora(
            RunId(999),
            LoraFormat::Kohya,
            &s.ws_dir.join("x.safetensors"),
        )
        .unwrap_err();
    assert!(
        matches!(e, StudioError::NotFound { what: "run", .. }),
        "{e}"
    );

    // A project whose job is queued or running keeps its files.
    let queued = runner
        .submit_dreambooth(s.project, quick(&s.model, 200))
        .unwrap();
    let e = s.ws.delete_project(s.project).unwrap_err();
    assert!(one_line(e).contains("cancel it before deleting"));
    runner.cancel(queued.id).unwrap();
    wait(&runner, queued.id);

    // One runner per workspace.
    let e = JobRunner::start(&s.ws_dir, DeviceChoice::Cpu, Precision::F32).unwrap_err();
    assert!(matches!(e, StudioError::Busy { .. }), "{e}");
    assert!(one_line(e).contains("jobs.lock"));
}

#[test]
fn settings_and_events_have_the_app_json_shape() {
    let s = setup("json");
    let defaults = DreamBoothSettings::defaults_for(&s.model);
    assert_eq!(
        (
            defaults.resolution,
            defaults.steps,
            defaults.lora_rank,
            defaults.lr
        ),
        (16, 400, 4, 1e-4),
        "SD: diffusers' recipe at the native size"
    );
    let json = serde_json::to_value(&defaults).unwrap();
    for key in [
        "baseModelId",
        "loraRank",
        "loraAlpha",
        "priorPreservation",
        "trainTextEncoder",
        "sampleEvery",
        "checkpointEvery",
        "instancePrompt",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    let dpo = serde_json::to_value(DpoSettings::defaults_for(&s.model, RunId(3))).unwrap();
    assert_eq!(dpo["fromRunId"], 3);
    assert!(dpo.get("promptsPerStage").is_some() && dpo.get("angleMin").is_some());

    let step = JobEvent::Step {
        job_id: JobId(7),
        step: 2,
        total: 10,
        loss: 0.5,
        lr: 1e-4,
        eta_seconds: Some(3.0),
        accuracy: None,
    };
    let v = serde_json::to_value(&step).unwrap();
    assert_eq!(v["event"], "step");
    assert_eq!(v["jobId"], 7);
    assert_eq!(v["etaSeconds"], 3.0);
    let finished = serde_json::to_value(JobEvent::Finished {
        job_id: JobId(7),
        run_id: Some(RunId(2)),
    })
    .unwrap();
    assert_eq!(
        finished,
        serde_json::json!({"event": "finished", "jobId": 7, "runId": 2})
    );
    let back: JobEvent = serde_json::from_value(v).unwrap();
    assert_eq!(back, step);

    // The shell shares one runner between threads.
    fn send_sync<T: Send + Sync>() {}
    send_sync::<JobRunner>();
}

/// The built-in world model end to end, when its packed folders are at `$LIKENESS_WORLD_DIR`
/// (`world-sd`, `world-clip`): `cargo test -p likeness-studio --test suite jobs:: -- --ignored`.
#[test]
#[ignore = "needs the packed built-in world models in $LIKENESS_WORLD_DIR"]
fn the_builtin_world_model_trains_dpo_and_galleries_with_its_own_clip() {
    let world = PathBuf::from(std::env::var_os("LIKENESS_WORLD_DIR").expect("LIKENESS_WORLD_DIR"));
    let dir = TempDir::new("world");
    let ws_dir = dir.join("ws");
    let mut ws = Workspace::open(&ws_dir).unwrap();
    let project = ws.create_project("Star", "sks", "star").unwrap().id;
    let photos = dir.join("photos");
    likeness_train::world::write_concept_photos("star-creature", &photos, 64).unwrap();
    let opts = ImportOptions {
        min_side: 64,
        ..Default::default()
    };
    let report = ws.import_photos(project, &[photos], &opts).unwrap();
    assert!(!report.imported.is_empty(), "{report:?}");
    let model = ws.add_builtin(&world.join("world-sd")).unwrap();
    let defaults = DreamBoothSettings::defaults_for(&model);
    let native = model.summary["native_size"].as_u64().unwrap() as usize;
    assert_eq!(
        (defaults.resolution, defaults.steps, defaults.lr),
        (native, 300, 1e-3)
    );
    let runner = start(&ws_dir);
    let db = runner
        .submit_dreambooth(
            project,
            DreamBoothSettings {
                steps: 4,
                sample_every: 0,
                ..defaults
            },
        )
        .unwrap();
    assert_eq!(wait(&runner, db.id).status, JobStatus::Done);
    let dpo = runner
        .submit_dpo(
            project,
            DpoSettings {
                stages: 1,
                prompts_per_stage: 2,
                samples_per_prompt: 2,
                angle_min: 0.0,
                angle_max: 180.0,
                steps: 2,
                ..DpoSettings::defaults_for(&model, db.run_id.unwrap())
            },
        )
        .unwrap();
    let done = wait(&runner, dpo.id);
    assert_eq!(done.status, JobStatus::Done, "{done:?}");
    let stage = done.run_id.unwrap();
    let settings = GallerySettings {
        prompts: 2,
        seeds: 2,
        ..GallerySettings::defaults_for(&model, vec![None, db.run_id, Some(stage)])
    };
    let g = runner.submit_gallery_with(project, settings).unwrap();
    assert_eq!(wait(&runner, g.id).status, JobStatus::Done);
    let table = ws.compare(project, &[]).unwrap();
    assert_eq!(table.cells.len(), 12);
    assert!(table.prompts[0].contains("sks star") && table.prompts[0].contains("background"));
    assert!(table.cells.iter().all(|c| c.is.is_some() && c.ts.is_some()));
    assert_eq!(ws.scatter(project).unwrap().len(), 3);
}
