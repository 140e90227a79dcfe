/**
 * How much of the machine other programs took while a part ran. The benchmark shares its cores with whatever
 * else runs (on a shared CI box or a developer machine, other test suites); figures from a busy machine are
 * pessimistic, and the report says so instead of passing them off as the software's speed.
 *
 * CPU time from /proc: the whole machine's (/proc/stat) minus this process and all its descendants, children that
 * already exited included (their time is in their parent's cutime/cstime once reaped).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

const CLOCK_TICKS_PER_SECOND = 100;

interface Sample {
  at: number;
  /** Busy ticks of the whole machine. */
  machine: number;
  /** Busy ticks of this benchmark's process tree. */
  own: number;
}

export interface PartContention {
  part: string;
  seconds: number;
  /** Share of all cores used by other programs during the part (0..1). */
  otherCpuShare: number;
  /** Share of all cores used by the benchmark's own processes (0..1). */
  ownCpuShare: number;
}

function machineBusyTicks(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
  return fields[0]! + fields[1]! + fields[2]! + fields[5]! + fields[6]! + fields[7]!;
}

function processTreeTicks(root: number): number {
  const parents = new Map<number, number>();
  const ticks = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields[1] is ppid (field 4); utime, stime, cutime, cstime are fields 14..17.
      parents.set(Number(entry), Number(fields[1]));
      ticks.set(Number(entry), Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]));
    } catch {
      // The process ended while being read.
    }
  }
  let total = 0;
  for (const [pid, own] of ticks) {
    for (let p: number | undefined = pid; p !== undefined && p > 1; p = parents.get(p)) {
      if (p === root) {
        total += own;
        break;
      }
    }
  }
  return total;
}

function sample(): Sample | null {
  try {
    return { at: performance.now(), machine: machineBusyTicks(), own: processTreeTicks(process.pid) };
  } catch {
    return null; // not Linux: contention is simply not reported
  }
}

export class ContentionMonitor {
  private readonly parts: PartContention[] = [];
  private current: { part: string; start: Sample } | null = null;

  begin(part: string): void {
    const start = sample();
    this.current = start ? { part, start } : null;
  }

  end(): void {
    const current = this.current;
    this.current = null;
    const stop = sample();
    if (!current || !stop) return;
    const seconds = (stop.at - current.start.at) / 1000;
    const capacity = seconds * CLOCK_TICKS_PER_SECOND * availableParallelism();
    if (capacity <= 0) return;
    const machine = stop.machine - current.start.machine;
    const own = stop.own - current.start.own;
    this.parts.push({
      part: current.part,
      seconds,
      otherCpuShare: Math.max(0, Math.min(1, (machine - own) / capacity)),
      ownCpuShare: Math.max(0, Math.min(1, own / capacity)),
    });
  }

  results(): PartContention[] {
    return [...this.parts];
  }
}
