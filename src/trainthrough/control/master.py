"""The one recovery master of a TrainingJob, for both runtimes.

Every decision of a job's life is made here and nowhere else: what to start, when a dead
process is restarted (a due time, never a sleep), promoted or replaced, the chain's
configuration and epochs, a replacement's join, whether a kill must wait for its target,
when a PS that answers nothing is dead and a worker that makes no progress is stuck, each
recovery's milestones and lost updates, the restart limit, the run policy (the active
deadline, suspending and resuming, which pods go at the end, when a finished job is
deleted), and the job's end and its reason. It is pure: its state is plain data
(control/state.py), the clock is passed in, and it answers observations
(control/messages.py) with actions that a driver applies:

    master = Master(job)                    # or Master(job, MasterState.load(status["master"]))
    actions = master.start(now)
    actions += master.observe(Exited("ps-0", -9, at=now, disrupted=True), now)
    actions += master.observe(Unanswered("ps-0", at=now), now)   # a Health call that failed
    actions += master.tick(now)             # due restarts, replacements, suspend/resume, deadline, stop

Drivers: control/supervising.py (processes on loopback) and operator/driving.py (pods).
"""

from __future__ import annotations

import random

from trainthrough.control.messages import (
    Action,
    Disrupted,
    Exited,
    Finish,
    Health,
    Observation,
    Published,
    PublishChain,
    Record,
    RecoveryDone,
    Remove,
    Start,
    Stop,
    Terminate,
    Unanswered,
    UpdatesLost,
)
from trainthrough.control.recovery import Decision, Remedy, decide
from trainthrough.control.schedule import planned_kills, resolve_target
from trainthrough.control.state import Chain, Kill, MasterState, Recovery, Replacement, WorkerSeen
from trainthrough.control.vocabulary import EventName, JobPhase, Reason, RecoveryStage
from trainthrough.errors import CONFIG_EXIT_CODE
from trainthrough.names import PSStart, is_ps, is_worker, ps_name, ps_names, shard_key, shard_of, worker_names
from trainthrough.spec import CleanPodPolicy, Mode, TrainingJob

STARTUP_TIMEOUT = 300.0  # seconds from the first start to the first applied update
PUBLISH_RETRY = 1.0  # seconds between attempts to publish a chain configuration
STOP_GRACE = 60.0  # a stateless worker stopped offline waits a little to hand its work over
PS_STOP_GRACE = 10.0
# A PS whose Health calls all fail for this long is dead (hung: stopped, deadlocked, cut
# off): it is killed, and its restart waits for its exit, so that two live PS processes
# never share one checkpoint store. Busy, a PS still answers Health within seconds.
LIVENESS_DEADLINE = 10.0
# A worker whose reported steps do not change for this long while the job runs and its
# head serves is stuck (in chain mode: every replica it knew of is gone, and no reply told
# it the current chain): it is restarted with the current chain. Generous: a worker that
# boots on a loaded machine, or waits for sync rounds that time out, still reports.
STUCK_WORKER_DEADLINE = 30.0
RESTART_GRACE = 5.0  # a stuck worker is asked to stop first: it reports its idle time
# Once every worker finished, the job ends at the head's next Health read (the workers'
# final progress is in it, so the status shows it) or after this long without one.
FINAL_PROGRESS_WAIT = 5.0


def expires_at(finished_at: float | None, ttl: int | None) -> float | None:
    """When a job that finished at `finished_at` is to be deleted
    (spec.runPolicy.ttlSecondsAfterFinished); None: not finished, or kept."""
    if finished_at is None or ttl is None:
        return None
    return finished_at + ttl


class Master:
    def __init__(
        self,
        job: TrainingJob,
        state: MasterState | None = None,
        *,
        restart_delay: float | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        liveness_deadline: float = LIVENESS_DEADLINE,
        stuck_after: float = STUCK_WORKER_DEADLINE,
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.mode = Mode(job.spec.consistency)
        self.state = state or MasterState()
        self.restart_delay = self.spec.parameter_server.restart_delay if restart_delay is None else restart_delay
        self.startup_timeout = startup_timeout
        self.liveness_deadline = liveness_deadline
        self.stuck_after = stuck_after
        self.workers = worker_names(self.spec.workers.replicas)
        self.shards = self.spec.parameter_server.shards

    # -- what the drivers ask ---------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state.phase.terminal

    def chain_order(self, shard: int = 0) -> list[str]:
        """Shard `shard`'s PS processes head first (its chain's members, else its one PS)."""
        if self.state.chains:
            return list(self.state.chains[shard].members)
        return [p for p in self.state.ps if shard_of(p) == shard][:1]

    def chain_orders(self) -> list[list[str]]:
        """Every shard's chain_order, in shard order."""
        return [self.chain_order(k) for k in range(self.shards)]

    def heads(self) -> list[str]:
        """The head of every shard that has one."""
        return [order[0] for order in self.chain_orders() if order]

    def chain_of(self, process: str) -> Chain | None:
        """The chain PS `process` belongs to (its shard's); None outside chain modes and
        for a worker."""
        return self.state.chains[shard_of(process)] if self.state.chains and is_ps(process) else None

    def members(self) -> list[str]:
        """Every shard's PS processes head first, shard after shard."""
        return [p for order in self.chain_orders() for p in order]

    def elapsed(self, now: float) -> float:
        """Seconds on the job's clock (0 until training started)."""
        started = self.state.training_started_at
        return 0.0 if started is None else max(0.0, now - started)

    def watched(self) -> list[str]:
        """The PS processes whose health the driver should read now."""
        s = self.state
        if s.phase is JobPhase.STARTING:
            return [p for p in s.ps if p in s.up]
        if s.phase.halted:
            return []
        # Every member: each one's liveness is checked (a hung middle replica stalls the
        # chain as surely as a hung head).
        names = self.members()
        names += [r.target for r in s.recoveries if r.stage is RecoveryStage.AWAITING_READY]
        names += [r.name for r in s.replacements if r.name]
        return list(dict.fromkeys(n for n in names if n in s.up))

    def acknowledging(self, process: str) -> str:
        """The PS whose version counts as acknowledged when `process` dies: with `ack:
        tail` a push is acknowledged once the tail has it, otherwise once `process` has."""
        if is_worker(process):
            return process
        order = self.chain_order(shard_of(process))
        if self.state.chains and self.spec.chain.ack == "tail" and order and process == order[0]:
            return order[-1]
        return process

    def kill_target(self, target: str, rng: random.Random | None = None) -> str:
        """The process chaos target `target` means now (schedule.resolve_target; a worker
        that finished is no target); UnknownTarget if none."""
        finished = set(self.state.finished_workers)
        return resolve_target(target, self.chain_orders(), [w for w in self.workers if w not in finished], rng)

    def kill_blocker(self, process: str, live: bool) -> str | None:
        """Why a kill of `process` must wait (None: kill now). A kill hits the first live
        incarnation at or after its time: killing a process that is still down, or whose
        recovery has not reached its first update, would be no new failure."""
        if not live or process not in self.state.up:
            return f"{process} is down"
        if process in self.state.kills:
            return f"{process} is being killed"
        if process in self.state.restarting:
            return f"{process} is being restarted"
        if any(r.target == process for r in self.state.recoveries):
            return f"{process} is still recovering"
        return None

    # -- life cycle ------------------------------------------------------------------------------
    def expires_at(self) -> float | None:
        """When the finished job is to be deleted (None: not finished, or kept)."""
        s = self.state
        return expires_at(s.stopped_at if s.phase.terminal else None, self.spec.run_policy.ttl_seconds_after_finished)

    def start(self, now: float) -> list[Action]:
        """Start the job's PS processes; workers follow once every PS answers. A job whose
        spec.runPolicy.suspend is true starts nothing (call again once it is false)."""
        s = self.state
        if s.started or s.phase.terminal:
            return []
        if self.spec.run_policy.suspend:
            if s.phase is JobPhase.SUSPENDED:
                return []
            s.phase = JobPhase.SUSPENDED
            message = "created suspended (spec.runPolicy.suspend): nothing is created until it is resumed"
            return [Record(EventName.SUSPENDED, {"job": self.job.metadata.name, "started": False}, Reason.SUSPENDED, message)]
        s.phase, s.created_at = JobPhase.STARTING, now
        s.starting_since = s.active_since = now
        groups = ps_names(self.shards, self.spec.parameter_server.replicas)
        s.ps = [p for group in groups for p in group]
        if self.mode.chained:
            s.chains = [Chain(members=group) for group in groups]
        out: list[Action] = [
            Record(
                EventName.RUN_START,
                {
                    "job": self.job.metadata.name,
                    "mode": self.mode.value,
                    "updates": self.spec.updates,
                    "workers": len(self.workers),
                    "ps_replicas": self.spec.parameter_server.replicas,
                    "shards": self.shards,
                    "restart_delay": self.restart_delay,
                    "backoff_limit": self.spec.run_policy.backoff_limit,
                },
            )
        ]
        return out + [self._start(p, now) for p in s.ps]

    def fail(self, message: str, now: float) -> list[Action]:
        """A permanent error the driver met (a broken spec, an API that refuses): the end."""
        return self._finish(JobPhase.FAILED, Reason.PERMANENT_ERROR, message, now)

    def stop(self, message: str, now: float) -> list[Action]:
        """The job is stopped from outside (a user, a benchmark that measured what it
        wanted): it ends as Succeeded if it was training, else as Failed."""
        phase = JobPhase.SUCCEEDED if self.state.phase is JobPhase.RUNNING else JobPhase.FAILED
        return self._finish(phase, Reason.STOPPED, message, now)

    def observe(self, observation: Observation, now: float) -> list[Action]:
        if isinstance(observation, Health):
            return self._on_health(observation, now)
        if isinstance(observation, Unanswered):
            return self._on_unanswered(observation, now)
        if isinstance(observation, Exited):
            return self._on_exit(observation, now)
        if isinstance(observation, Disrupted):
            return self._on_disrupted(observation)
        if isinstance(observation, Published):
            return self._on_published(observation, now)
        raise TypeError(f"not an observation: {observation!r}")

    def tick(self, now: float) -> list[Action]:
        """What is due at `now`: restarts after their delay, replacements, a configuration
        to publish again, start-up's deadline, and the stop condition."""
        s = self.state
        if s.phase.terminal or not s.started:
            return []
        policy = self.spec.run_policy
        if s.phase is JobPhase.SUSPENDED:
            return [] if policy.suspend else self._resume(now)
        if policy.suspend:
            return self._suspend(now)
        deadline = policy.active_deadline_seconds
        if deadline is not None and s.active(now) >= deadline:
            active = s.active(now)
            message = f"active for {active:.0f} s, past spec.runPolicy.activeDeadlineSeconds {deadline}"
            return self._finish(JobPhase.FAILED, Reason.DEADLINE_EXCEEDED, message, now)
        out: list[Action] = []
        starting_since = s.starting_since if s.starting_since is not None else s.created_at
        if s.phase is JobPhase.STARTING and starting_since is not None and now - starting_since > self.startup_timeout:
            return self._finish(
                JobPhase.FAILED, Reason.STARTUP_TIMEOUT, f"no update was applied within {self.startup_timeout:.0f} s of the start", now
            )
        for recovery in s.recoveries:
            if recovery.stage is RecoveryStage.AWAITING_RESTART and recovery.due_at is not None and now >= recovery.due_at:
                recovery.stage, recovery.restarted_at = RecoveryStage.AWAITING_READY, now
                out.append(self._start(recovery.target, now, start=recovery.restart))
        for replacement in s.replacements:
            if not replacement.name and now >= replacement.due_at:
                replacement.name = self._next_ps(shard_of(replacement.replaces))
                replacement.started_at = now
                out.append(self._start(replacement.name, now, start=PSStart.JOIN))
        if s.phase is JobPhase.RUNNING:
            out += self._scale_workers(now)
        for shard, chain in enumerate(s.chains):
            if chain.members and chain.published_epoch < chain.epoch and now >= chain.publish_due_at:
                if s.phase is JobPhase.RUNNING or set(chain.members) <= set(s.answered):
                    out.append(self._publish(shard, now))
        return out + self._check_stop(now)

    # -- observations ------------------------------------------------------------------------------
    def _on_health(self, health: Health, now: float) -> list[Action]:
        s = self.state
        name = health.process
        if name not in s.up:
            return []
        head = name in self.heads()
        reported = health.progress_of(self.workers)
        s.versions[name] = health.version
        if head:
            # Workers report to every shard's head: progress is read from whichever serves.
            p = s.progress
            s.head_states[name] = health.state
            p.serving = self._serving_summary(name, health.state)
            if health.state == "serving":
                p.steps = max(p.steps, reported.steps)
                p.idle_seconds = max(p.idle_seconds, reported.idle_seconds)
                p.version = self._job_version(name, health.version)
                if reported.accuracy >= 0:
                    p.accuracy = reported.accuracy
                    p.best_accuracy = max(p.best_accuracy, reported.accuracy)
                p.observed_at = now
        out: list[Action] = []
        if head and reported.lost_updates > s.completed.lost_updates:
            out += self._updates_lost(reported.lost_updates)
        if s.phase.halted:
            return out  # the final progress is still read; nothing is decided any more
        s.silent_since.pop(name, None)
        if name not in s.answered:
            s.answered.append(name)
            chain = self.chain_of(name)
            if chain is not None and name in chain.members and chain.published_epoch < chain.epoch and s.phase is JobPhase.RUNNING:
                out.append(self._publish(shard_of(name), now))  # a restarted replica (hybrid: rebuilt) learns its place at once
        if s.phase is JobPhase.STARTING:
            out += self._advance_start(health, now)
        for replacement in list(s.replacements):
            if replacement.name == name:
                out += self._join(replacement, health, now)
        for recovery in list(s.recoveries):
            out += self._advance_recovery(recovery, health, now)
        return out + self._watch_workers(health, now)

    def _advance_start(self, health: Health, now: float) -> list[Action]:
        s = self.state
        heads = self.heads()
        out: list[Action] = []
        if s.suspension.version_before is not None and health.process in heads and health.state == "serving":
            s.suspension.restored[health.process] = max(0, health.started_version)
            if set(heads) <= set(s.suspension.restored):  # every shard's head serves: measured once
                out.append(self._restored(health))
        if not set(self.members()) <= set(s.answered):
            return out
        unpublished = [(k, chain) for k, chain in enumerate(s.chains) if chain.published_epoch < chain.epoch]
        if unpublished:
            out += [self._publish(k, now) for k, chain in unpublished if now >= chain.publish_due_at]
            return out
        if not s.workers_started:
            s.workers_started = True
            out += [self._start(w, now) for w in self.workers if w not in s.finished_workers]
            return out
        # Training runs once a head applied an update above the version it started from
        # (0, or what a resume restored); the job's clock goes on from where a suspension
        # stopped it.
        if health.process in heads and health.version > max(0, health.started_version) and s.suspension.version_before is None:
            s.phase, s.training_started_at = JobPhase.RUNNING, now - s.suspension.trained_seconds
            message = "the first update was applied" + (" since the resume" if s.suspension.count else "")
            out.append(Record(EventName.TRAINING_STARTED, {"ps": self._ps_field()}, Reason.TRAINING_STARTED, message))
        return out

    def _on_disrupted(self, disrupted: Disrupted) -> list[Action]:
        s = self.state
        if disrupted.process not in s.up or disrupted.process in s.kills or s.phase.halted:
            return []  # (the end's and a suspension's own stops are no disruptions)
        if disrupted.process in s.restarting:
            return []  # the master's own restart of a stuck worker (a pod being deleted)
        version = disrupted.version_before
        if version is None:
            version = s.versions.get(self.acknowledging(disrupted.process), s.progress.version)
        s.kills[disrupted.process] = Kill(killed_at=disrupted.at, version_before=version)
        if disrupted.scheduled_at is not None:
            s.chaos_fired += 1
        fields = {
            "target": disrupted.target or disrupted.process,
            "process": disrupted.process,
            "version_before": version,
            "scheduled_at": disrupted.scheduled_at,
            "killed_at": disrupted.at,
        }
        return [Record(EventName.KILL, fields)]

    def _on_exit(self, exited: Exited, now: float) -> list[Action]:
        s = self.state
        name = exited.process
        stopping = s.phase.halted
        known = name in s.up
        if known:
            s.up.remove(name)
        if name in s.answered:
            s.answered.remove(name)
        kill = s.kills.pop(name, None)
        s.silent_since.pop(name, None)
        if not is_worker(name):
            # Its shard's head must serve again before workers are judged (a failover of
            # any replica stalls the chain's pushes meanwhile).
            shard = shard_of(name)
            s.serving_heads = {h: since for h, since in s.serving_heads.items() if shard_of(h) != shard}
            s.head_states.pop(name, None)
        restarted = name in s.restarting
        if restarted:
            s.restarting.remove(name)
        if known and stopping and (kill is not None or (s.stopped_at is not None and exited.at < s.stopped_at)):
            return self._lost_before_stop(exited, kill)
        if stopping or not known:
            why = "not a live process of this job"
            if stopping:
                why = "the job is suspended" if s.phase is JobPhase.SUSPENDED else "the job is stopping"
            return [self._exit_record(exited, Remedy.IGNORE.value, why)]
        if restarted:
            reason = f"{name} made no progress: started again with the current chain"
            return [self._exit_record(exited, Remedy.RESTART_WORKER.value, reason, True), self._start(name, now)]
        disrupted = exited.disrupted or kill is not None
        out: list[Action] = []
        if not disrupted and exited.exit_code != 0:
            s.failures += 1
        if not disrupted and exited.exit_code == CONFIG_EXIT_CODE:
            # It cannot work as configured (a dataPath without the data): started again it
            # would fail the same way, so the job fails now rather than at the backoff limit.
            why = f"{name} cannot work as configured (exit {CONFIG_EXIT_CODE}, EX_CONFIG; its log says why)"
            out.append(self._exit_record(exited, "fail", why, disrupted))
            return out + self._finish(JobPhase.FAILED, Reason.PERMANENT_ERROR, why, now)
        for replacement in s.replacements:
            if replacement.name == name:
                # A replacement died before it joined: another one, after the delay.
                out.append(Record(EventName.REPLICA_JOIN_FAILED, {"process": name}, Reason.REPLICA_JOIN_FAILED, f"{name} was lost before it joined", warning=True))
                out.append(self._exit_record(exited, "replace", "a chain replacement was lost before it joined", disrupted))
                chain = self.chain_of(name)
                if replacement.added_epoch is not None and chain is not None and name in chain.members:
                    chain.members.remove(name)
                    chain.epoch += 1
                    out.append(self._publish(shard_of(name), now))
                replacement.name, replacement.started_at, replacement.added_epoch = "", None, None
                replacement.due_at = exited.at + self.restart_delay
                return out + self._check_backoff(now)
        if s.phase is JobPhase.STARTING and name in s.ps:
            # Not training yet: the same PS again (nothing to promote or restore from).
            decision = Decision(Remedy.RESTART_PS, name, f"{name} exited with {exited.exit_code} during start-up")
        else:
            decision = decide(
                mode=self.mode.value,
                name=name,
                exit_code=exited.exit_code,
                stopping=False,
                chain=self._chain_members(name),
                known_ps=set(s.ps),
                serving=self._holding_state(shard_of(name)) if not is_worker(name) else None,
            )
        out.append(self._exit_record(exited, decision.action.value, decision.reason, disrupted))
        backoff = self._check_backoff(now)
        if backoff:
            return out + backoff
        if decision.action is Remedy.FINISHED:
            if name not in s.finished_workers:
                s.finished_workers.append(name)
        elif decision.action is Remedy.RESTART_WORKER:
            out.append(self._start(name, now))
        elif decision.action is Remedy.RESTART_PS:
            if s.phase is JobPhase.STARTING:
                chain = self.chain_of(name)
                if chain is not None:  # the new process has no configuration yet
                    chain.published_epoch = min(chain.published_epoch, chain.epoch - 1)
                out.append(self._start(name, now))
            else:
                out += self._schedule_restart(exited, kill)
        elif decision.action is Remedy.PROMOTE:
            out += self._promote(exited, kill, now)
        elif decision.action is Remedy.REBUILD:
            out += self._rebuild(exited, kill, now)
        return out + self._check_stop(now)

    def _on_unanswered(self, unanswered: Unanswered, now: float) -> list[Action]:
        """Health calls that fail for longer than the liveness deadline: the PS is dead.
        It is killed; the recovery follows its exit as for any death, so its replacement
        starts only once it is gone."""
        s = self.state
        name = unanswered.process
        if s.phase.halted or name not in s.up or is_worker(name):
            return []
        s.serving_heads.pop(name, None)  # not serving: workers waiting for it are not stuck
        if name not in s.answered or name in s.kills:
            return []  # booting (start-up has its own deadline), or already being killed
        since = s.silent_since.setdefault(name, unanswered.at)
        silent = now - since
        if silent < self.liveness_deadline:
            return []
        s.kills[name] = Kill(killed_at=since, version_before=s.versions.get(self.acknowledging(name), s.progress.version))
        s.failures += 1  # it failed on its own: counted, as a crash is
        record = Record(
            EventName.PS_UNRESPONSIVE,
            {"process": name, "silent_since": since, "silent_seconds": round(silent, 6)},
            Reason.PS_UNRESPONSIVE,
            f"{name} answered no Health call for {silent:.1f} s: killed, and recovered once it is gone",
            warning=True,
        )
        return [record, Terminate(name)] + self._check_backoff(now)

    def _on_published(self, published: Published, now: float) -> list[Action]:
        if published.shard >= len(self.state.chains):
            return []
        chain = self.state.chains[published.shard]
        if not published.failed:
            chain.published_epoch = max(chain.published_epoch, published.epoch)
        # A member that did not take it is dead or starting; its death or the retry follows.
        return []

    # -- recoveries ----------------------------------------------------------------------------------
    def _new_recovery(self, exited: Exited, kill: Kill | None, stage: RecoveryStage) -> tuple[Recovery, Record]:
        s = self.state
        version = kill.version_before if kill is not None else s.versions.get(self.acknowledging(exited.process), s.progress.version)
        recovery = Recovery(
            target=exited.process,
            mode=self.mode,
            stage=stage,
            detected_at=exited.at,
            killed_at=kill.killed_at if kill is not None else None,
            version_before=version,
            extra=self._shard_field(exited.process),
        )
        detect = round(recovery.phases()["detect"], 6)
        record = Record(
            EventName.FAILURE_DETECTED,
            {"process": exited.process, "detect_seconds": detect},
            Reason.FAILURE_DETECTED,
            f"{exited.process} is lost (exit {exited.exit_code})",
            warning=True,
        )
        return recovery, record

    def _schedule_restart(self, exited: Exited, kill: Kill | None, start: PSStart = PSStart.FRESH) -> list[Action]:
        s = self.state
        due = exited.at + self.restart_delay
        ongoing = next((r for r in s.recoveries if r.target == exited.process), None)
        if ongoing is not None:
            # A second failure before the first update: the same outage goes on.
            ongoing.deaths += 1
            ongoing.stage, ongoing.due_at = RecoveryStage.AWAITING_RESTART, due
            ongoing.restarted_at = ongoing.restored_at = None
            ongoing.restart = start
            return []
        recovery, record = self._new_recovery(exited, kill, RecoveryStage.AWAITING_RESTART)
        recovery.due_at, recovery.restart = due, start
        s.recoveries.append(recovery)
        return [record]

    def _promote(self, exited: Exited, kill: Kill | None, now: float) -> list[Action]:
        s = self.state
        chain = self.chain_of(exited.process)
        assert chain is not None
        recovery, record = self._new_recovery(exited, kill, RecoveryStage.AWAITING_PROMOTED)
        chain.members = [m for m in chain.members if m != exited.process]
        chain.epoch += 1
        if not chain.members:
            return [record] + self._finish(
                JobPhase.FAILED, Reason.CHAIN_LOST, f"every chain replica is lost ({exited.process} was the last)", now
            )
        head = chain.members[0]
        recovery.restored_at, recovery.restored_from = now, "chain"
        recovery.extra = {"new_head": head, "epoch": chain.epoch, "chain": list(chain.members), **self._shard_field(exited.process)}
        s.recoveries.append(recovery)
        s.replacements.append(Replacement(replaces=exited.process, due_at=exited.at + self.restart_delay))
        promoted = Record(
            EventName.CHAIN_PROMOTED,
            {"removed": exited.process, "head": head, "epoch": chain.epoch, "chain": list(chain.members)},
            Reason.CHAIN_RECONFIGURED,
            f"removed {exited.process}; epoch {chain.epoch}, head {head}; a replacement joins at the tail",
        )
        return [record, self._publish(shard_of(exited.process), now), promoted]

    def _holding_state(self, shard: int) -> list[str]:
        """The shard's chain members that hold the state: not replacements still joining."""
        joining = {r.name for r in self.state.replacements if r.added_epoch is not None}
        return [m for m in self.chain_order(shard) if m not in joining]

    def _rebuilding(self, shard: int) -> bool:
        """Hybrid: the shard's chain lost every replica and is not serving again yet."""
        return any(
            r.restart is PSStart.REBUILD and r.restored_at is None and shard_of(r.target) == shard for r in self.state.recoveries
        )  # fmt: skip

    def _rebuild(self, exited: Exited, kill: Kill | None, now: float) -> list[Action]:
        """Hybrid, the last replica with the state is lost: it starts again, empty, and
        seeds from the workers (they train on meanwhile); replacements still joining stay
        at the tail, to take the rebuilt state from it."""
        chain = self.chain_of(exited.process)
        assert chain is not None
        chain.members = [exited.process] + [m for m in chain.members if m != exited.process]
        chain.epoch += 1
        out = self._schedule_restart(exited, kill, start=PSStart.REBUILD)
        rebuilding = Record(
            EventName.CHAIN_REBUILDING,
            {"lost": exited.process, "epoch": chain.epoch, "chain": list(chain.members), "restart_in": self.restart_delay},
            Reason.CHAIN_REBUILDING,
            f"every replica is lost ({exited.process} was the last): the workers train on, and {exited.process} "
            f"starts again in {self.restart_delay:g} s to rebuild the chain from them",
            warning=True,
        )
        return out + [rebuilding]

    def _advance_recovery(self, recovery: Recovery, health: Health, now: float) -> list[Action]:
        order = self.chain_order(shard_of(recovery.target))
        head = order[0] if order else None
        if recovery.stage is RecoveryStage.AWAITING_READY and health.process == recovery.target:
            if health.state != "serving":
                return []
            recovery.restored_at = health.ready_at or now
            recovery.version_restored = health.started_version
            recovery.restored_from = health.restored_from
            recovery.stage = RecoveryStage.AWAITING_FIRST_UPDATE
        if recovery.stage is RecoveryStage.AWAITING_PROMOTED and health.process == head:
            recovery.version_restored = health.version
            recovery.stage = RecoveryStage.AWAITING_FIRST_UPDATE
            return []  # its first update is a version above this one
        if recovery.stage is not RecoveryStage.AWAITING_FIRST_UPDATE:
            return []
        if self.mode.chained and recovery.restart is not PSStart.REBUILD:
            if health.process != head or health.version <= recovery.version_restored:
                return []
            recovery.first_update_at = now
        else:
            if health.process != recovery.target or health.updates_since_start <= 0:
                return []
            recovery.first_update_at = health.first_update_at or now
        return self._complete(recovery)

    def _complete(self, recovery: Recovery) -> list[Action]:
        s = self.state
        s.recoveries.remove(recovery)
        phases = recovery.phases()
        totals = s.completed
        totals.count += 1
        totals.downtime_seconds = round(totals.downtime_seconds + phases.get("total", 0.0), 6)
        totals.last = recovery.as_event()
        return [
            RecoveryDone(recovery.as_event(), phases),
            Record(
                EventName.RECOVERY,
                recovery.as_event(),
                Reason.RECOVERY_COMPLETED,
                f"{recovery.target}: training resumed {phases['total']:.3f} s after the loss",
            ),
        ]

    def _updates_lost(self, total: int) -> list[Action]:
        """The workers' sum of acknowledged updates missing from the state they follow
        grew (each worker measures its own when its PS changes, and reports the total)."""
        totals = self.state.completed
        count, totals.lost_updates = total - totals.lost_updates, total
        return [
            UpdatesLost(count, total),
            Record(
                EventName.UPDATES_LOST,
                {"count": count, "total": total},
                Reason.UPDATES_LOST,
                f"{count} acknowledged updates are not in the state training continues from ({total} in all)",
                warning=True,
            ),
        ]

    def _join(self, replacement: Replacement, health: Health, now: float) -> list[Action]:
        """A replacement answers: add it at the tail (the old tail sends it its state);
        it has joined once it serves."""
        s = self.state
        chain = self.chain_of(replacement.name)
        assert chain is not None
        shard = shard_of(replacement.name)
        if replacement.added_epoch is None:
            if self._rebuilding(shard):
                return []  # no replica holds a state to send it yet: joins once the rebuilt head serves
            chain.members.append(replacement.name)
            chain.epoch += 1
            replacement.added_epoch = chain.epoch
            return [self._publish(shard, now)]
        if health.state != "serving":
            return []
        s.replacements.remove(replacement)
        seconds = round(now - (replacement.started_at or now), 6)
        joined = Record(
            EventName.REPLICA_JOINED,
            {
                "process": replacement.name,
                "replaces": replacement.replaces,
                "epoch": replacement.added_epoch,
                "chain": list(chain.members),
                "state": health.state,
                "applied_seq": health.applied_seq,
                "seconds": seconds,
            },
            Reason.REPLICA_JOINED,
            f"{replacement.name} joined the chain at the tail (epoch {replacement.added_epoch}) in place of {replacement.replaces}",
        )
        return [joined]

    def _scale_workers(self, now: float) -> list[Action]:
        """spec.workers.replicas changed: start the missing ranks, stop those beyond it."""
        s = self.state
        out: list[Action] = []
        for worker in self.workers:
            if worker not in s.up and worker not in s.finished_workers:
                out.append(self._start(worker, now))
        for process in list(s.up):
            if is_worker(process) and process not in self.workers:
                s.up.remove(process)  # scaled away on purpose: its end is no failure
                out.append(Stop(process, grace=STOP_GRACE))
        return out

    def _watch_workers(self, health: Health, now: float) -> list[Action]:
        """The head serves: a worker whose reported steps have not changed for the stuck
        deadline (counted from its start and from when the head began to serve) is stuck.
        A worker that never reaches the head has no report there: that is no change."""
        s = self.state
        heads = self.heads()
        if s.phase is not JobPhase.RUNNING or health.process not in heads:
            return []
        if health.state != "serving":
            s.serving_heads.pop(health.process, None)
            return []
        s.serving_heads.setdefault(health.process, now)
        for stale in [h for h in s.serving_heads if h not in heads]:
            del s.serving_heads[stale]  # no head any more (promoted away)
        if set(heads) - set(s.serving_heads):
            return []  # a shard's head does not serve: its workers wait, and are not stuck
        serving_since = max(s.serving_heads.values())
        reported = {r.worker: r.steps for r in health.workers}
        out: list[Action] = []
        for worker in self.workers:
            seen = s.seen_workers.get(worker)
            if seen is None or worker not in s.up or worker in s.finished_workers or worker in s.restarting:
                continue
            steps = reported.get(worker)
            if steps is not None and steps != seen.steps:
                seen.steps, seen.changed_at = steps, now
            elif now - max(seen.changed_at, serving_since) >= self.stuck_after:
                out += self._restart_stuck(worker, now - seen.changed_at, health.process, now)
        return out

    def _restart_stuck(self, worker: str, seconds: float, head: str, now: float) -> list[Action]:
        """End the worker (its exit starts it again with the current chain: a worker has no
        other channel from the master); it counts as a failure, so a worker that cannot
        make progress at all ends the job at the restart limit."""
        s = self.state
        s.restarting.append(worker)
        s.failures += 1
        record = Record(
            EventName.WORKER_STUCK,
            {"process": worker, "steps": s.seen_workers[worker].steps, "seconds": round(seconds, 6), "ps": self._ps_field()},
            Reason.WORKER_STUCK,
            f"{worker} made no progress for {seconds:.0f} s while {head} served: restarted with the current chain",
            warning=True,
        )
        return [record, Terminate(worker, grace=RESTART_GRACE)] + self._check_backoff(now)

    def _lost_before_stop(self, exited: Exited, kill: Kill | None) -> list[Action]:
        """A death that happened before the job's end was decided, observed after it: a
        failure (counted, detected, its recovery incomplete), not a process the end stopped."""
        s = self.state
        name = exited.process
        disrupted = exited.disrupted or kill is not None
        if not disrupted and exited.exit_code != 0:
            s.failures += 1
        decision = decide(
            mode=self.mode.value, name=name, exit_code=exited.exit_code, stopping=False, chain=self._chain_members(name), known_ps=set(s.ps)
        )  # fmt: skip
        out: list[Action] = [self._exit_record(exited, decision.action.value, f"{decision.reason}; the job ended first", disrupted)]
        if decision.action is Remedy.FINISHED and name not in s.finished_workers:
            s.finished_workers.append(name)
        if decision.action in (Remedy.RESTART_PS, Remedy.PROMOTE, Remedy.REBUILD):
            recovery, detected = self._new_recovery(exited, kill, RecoveryStage.AWAITING_RESTART)
            incomplete = Record(
                EventName.RECOVERY_INCOMPLETE, recovery.as_event(), Reason.RECOVERY_INCOMPLETE, f"{name}: the job ended first", warning=True
            )
            out += [detected, incomplete]
        chain = self.chain_of(name)
        if decision.action is Remedy.PROMOTE and chain is not None:
            chain.members.remove(name)  # the final configuration lists the replicas left
        return out

    def _join_incomplete(self, replacement: Replacement, now: float) -> Record:
        """The job ends before a replacement joined: it holds no state, so it is no member
        of the final configuration."""
        name = replacement.name
        chain = self.chain_of(name) if name else None
        if chain is not None and name in chain.members:
            chain.members.remove(name)
        fields = {
            "process": name,
            "replaces": replacement.replaces,
            "added_epoch": replacement.added_epoch,
            "started_at": replacement.started_at,
            "seconds": round(now - replacement.started_at, 6) if replacement.started_at is not None else None,
        }
        what = f"{name} had not joined (it holds no state)" if name else "it had not started"
        message = f"the replacement of {replacement.replaces}: {what} when the job ended"
        return Record(EventName.REPLICA_JOIN_INCOMPLETE, fields, Reason.REPLICA_JOIN_INCOMPLETE, message, warning=True)

    # -- helpers ---------------------------------------------------------------------------------------
    def _start(self, process: str, now: float, *, start: PSStart = PSStart.FRESH) -> Start:
        s = self.state
        if process not in s.up:
            s.up.append(process)
        if is_worker(process):
            s.seen_workers[process] = WorkerSeen(changed_at=now)
        ps = tuple(tuple(order) for order in self.chain_orders()) if is_worker(process) else ()
        return Start(process, start=start, ps=ps)

    def _publish(self, shard: int, now: float) -> PublishChain:
        chain = self.state.chains[shard]
        chain.publish_due_at = now + PUBLISH_RETRY
        return PublishChain(chain.epoch, tuple(chain.members), shard)

    def _chain_members(self, process: str) -> list[str]:
        """The members of `process`'s chain, head first ([] outside chain modes and for a worker)."""
        chain = self.chain_of(process)
        return list(chain.members) if chain is not None else []

    def _next_ps(self, shard: int) -> str:
        """A name for a new PS of `shard` (a chain replacement, a resume's top-up): the
        shard's next index, never one used before."""
        index = sum(1 for p in self.state.ps if shard_of(p) == shard)
        name = ps_name(index, shard_key(self.shards, shard))
        self.state.ps.append(name)
        return name

    def _serving_summary(self, head: str, state: str) -> str:
        """`progress.serving`: the head read and its state; in a sharded job the first head
        that does not serve, else every head (the job serves once every shard does)."""
        if self.shards == 1:
            return f"{head} {state}"
        heads = self.heads()
        down = [h for h in heads if self.state.head_states.get(h) != "serving"]
        if down:
            return f"{down[0]} {self.state.head_states.get(down[0], 'not read yet')}"
        return f"{', '.join(heads)} serving"

    def _job_version(self, head: str, version: int) -> int:
        """The model's version with `head` at `version`: the lowest of the shards' heads
        (every shard holds at least that many updates); the head's own when unsharded."""
        versions = [version if h == head else self.state.versions.get(h, version) for h in self.heads()]
        return min(versions) if versions else version

    def _ps_field(self) -> list[str] | list[list[str]]:
        """The PS processes for an event: head first; per shard in a sharded job."""
        return self.chain_order() if self.shards == 1 else self.chain_orders()

    def _shard_field(self, process: str) -> dict[str, int]:
        """An event's `shard` field for PS `process`, in a sharded job."""
        return {} if self.shards == 1 else {"shard": shard_of(process)}

    def _exit_record(self, exited: Exited, action: str, reason: str, disrupted: bool = False) -> Record:
        fields = {
            "process": exited.process,
            "exit_code": exited.exit_code,
            "disrupted": exited.disrupted or disrupted,
            "action": action,
            "reason": reason,
            "cpu_seconds": exited.cpu_seconds,
            "max_rss_bytes": exited.max_rss_bytes,
        }
        return Record(EventName.PROCESS_EXITED, fields)

    def _check_backoff(self, now: float) -> list[Action]:
        limit = self.spec.run_policy.backoff_limit
        if self.state.failures <= limit:
            return []
        return self._finish(
            JobPhase.FAILED,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{self.state.failures} process failures, more than spec.runPolicy.backoffLimit {limit}",
            now,
        )

    def _check_stop(self, now: float) -> list[Action]:
        s = self.state
        if s.phase is not JobPhase.RUNNING:
            return []
        stop = self.spec.stop
        elapsed = self.elapsed(now)
        if set(self.workers) <= set(s.finished_workers):
            if s.workers_done_at is None:
                s.workers_done_at = now
            if not self._final_progress_read(now):
                return []
            return self._finish(JobPhase.SUCCEEDED, Reason.STEPS_DONE, "every worker reached stop.steps", now)
        if stop.duration is not None and elapsed >= stop.duration:
            return self._finish(JobPhase.SUCCEEDED, Reason.DURATION_REACHED, f"stop.duration {stop.duration:g}s reached", now)
        # The target ends a job only once every planned kill has fired (spec.chaos and
        # randomChaos's draw: control/schedule.py) and between recoveries (chain
        # replacements included), so that a run has the failures it plans and each is
        # measured to its end; stop.duration binds regardless. The draw is made last, only
        # once the rest holds.
        target = stop.target_accuracy
        if (
            target is not None and s.progress.best_accuracy >= target and elapsed >= stop.min_duration
            and not s.recovering and s.chaos_fired >= len(planned_kills(self.spec))
        ):  # fmt: skip
            return self._finish(
                JobPhase.SUCCEEDED, Reason.TARGET_REACHED, f"stop.targetAccuracy {target:g} reached ({s.progress.best_accuracy:.4f})", now
            )
        return []

    def _final_progress_read(self, now: float) -> bool:
        """Whether the head's progress was read after the last worker finished (a worker
        reports its last steps before it exits), or no such read is coming: the head is not
        up, or FINAL_PROGRESS_WAIT passed without one."""
        s = self.state
        assert s.workers_done_at is not None
        read = s.progress.observed_at
        return (
            not any(head in s.up for head in self.heads()) or (read is not None and read > s.workers_done_at)
            or now - s.workers_done_at >= FINAL_PROGRESS_WAIT
        )  # fmt: skip

    def _finish(self, phase: JobPhase, reason: Reason, message: str, now: float) -> list[Action]:
        s = self.state
        if s.phase.terminal:
            return []
        s.phase, s.reason, s.message, s.stopped_at = phase, reason, message, now
        if s.active_since is not None:
            s.active_seconds, s.active_since = s.active(now), None
        out = self._abandon("the job ended first", now)
        out.append(Finish(phase, reason, message))
        policy = self.spec.run_policy.clean_pod_policy
        if policy is CleanPodPolicy.NONE:
            s.kept, s.up = list(s.up), []  # left running: their ends are no concern of the job's
            return out
        out += self._stops()
        if policy is CleanPodPolicy.ALL:
            known = dict.fromkeys(s.ps + self.workers + list(s.seen_workers))
            out += [Remove(p) for p in known if p not in s.up]
        return out

    def _stops(self) -> list[Action]:
        """Stop every process: workers first (a stateless worker offline hands its work
        over), then the PS (a checkpoint PS writes its state as it stops)."""
        s = self.state
        order = [w for w in self.workers if w in s.up] + [p for p in s.up if not is_worker(p)]
        return [Stop(p, grace=STOP_GRACE if is_worker(p) else PS_STOP_GRACE) for p in order]

    def _abandon(self, why: str, now: float) -> list[Action]:
        """Recoveries and replacements that will not finish (the job ends or is suspended):
        recorded as incomplete; an unjoined replacement leaves the chain."""
        s = self.state
        out: list[Action] = [
            Record(EventName.RECOVERY_INCOMPLETE, r.as_event(), Reason.RECOVERY_INCOMPLETE, f"{r.target}: {why}", warning=True)
            for r in s.recoveries
        ]
        out += [self._join_incomplete(r, now) for r in s.replacements]
        return out

    # -- suspend and resume (spec.runPolicy.suspend) --------------------------------------------
    def _suspend(self, now: float) -> list[Action]:
        """Stop every process; nothing is decided until the job is resumed. The active
        deadline and the job's clock stand still meanwhile."""
        s = self.state
        out = self._abandon("the job was suspended first", now)
        s.recoveries, s.replacements, s.kills, s.restarting = [], [], {}, []
        s.silent_since, s.serving_heads = {}, {}
        s.suspension.count += 1
        s.suspension.trained_seconds = self.elapsed(now) if s.phase is JobPhase.RUNNING else s.suspension.trained_seconds
        s.active_seconds, s.active_since = s.active(now), None
        s.phase, s.workers_started = JobPhase.SUSPENDED, False
        stops = self._stops()
        lossy, restores = self._resume_source()
        fields = {"processes": [a.process for a in stops if isinstance(a, Stop)], "resume_from": restores, "version": s.progress.version}
        message = f"spec.runPolicy.suspend: stopping {len(stops)} processes; resuming starts again from {restores}"
        return out + [Record(EventName.SUSPENDED, fields, Reason.SUSPENDED, message, warning=lossy)] + stops

    def _resume_source(self) -> tuple[bool, str]:
        """What a resume will start from, and whether that loses the state trained so far:
        a suspension stops every process, and only a checkpoint outlives them."""
        if self.mode is Mode.CHECKPOINT:
            return False, "the newest checkpoint (the PS writes one as it stops)"
        if self.mode is Mode.STATELESS and self.spec.stateless.fallback_checkpoint:
            return False, "the fallback checkpoint (the PS writes one as it stops)"
        holders = "its replicas" if self.mode.chained else "the PS and its workers"
        return True, f"the initial weights: the state lives only in {holders}, all stopped"

    def _resume(self, now: float) -> list[Action]:
        """spec.runPolicy.suspend is false again: once every process of the suspension has
        ended (a checkpoint PS has written its state; two PS never share its store), start
        the PS processes again (chain: the members, topped up to the spec's length, as a
        new configuration); workers follow as at the first start."""
        s = self.state
        if s.up:
            return []
        s.phase, s.starting_since, s.active_since = JobPhase.STARTING, now, now
        s.answered, s.versions, s.serving_heads, s.head_states = [], {}, {}, {}
        s.progress.serving = ""
        s.suspension.version_before, s.suspension.restored = s.progress.version, {}
        for shard, chain in enumerate(s.chains):
            while len(chain.members) < self.spec.parameter_server.replicas:
                chain.members.append(self._next_ps(shard))
            chain.epoch += 1  # published once every member answers, as at the first start
        order = self.members()
        fields = {"ps": self._ps_field(), "version_before": s.progress.version}
        message = f"spec.runPolicy.suspend is false: starting {', '.join(order)} again"
        return [Record(EventName.RESUMED, fields, Reason.RESUMED, message)] + [self._start(p, now) for p in order]

    def _restored(self, health: Health) -> Record:
        """Every resumed head serves: what they started from (the least of the shards')
        against the newest version read before the suspension (the updates a resume lost,
        measured)."""
        s = self.state
        before = s.suspension.version_before
        assert before is not None
        restored = min(s.suspension.restored.values())
        lost = max(0, before - restored)
        s.suspension.version_before, s.suspension.restored = None, {}
        s.suspension.last = {"restored_from": health.restored_from, "version_before": before, "version_restored": restored, "lost_updates": lost}
        message = f"resumed from {health.restored_from or 'nothing'} at version {restored}: {lost} of the {max(before, 0)} updates read before the suspension lost"
        return Record(EventName.STATE_RESTORED, dict(s.suspension.last, process=health.process), Reason.STATE_RESTORED, message, warning=lost > 0)
