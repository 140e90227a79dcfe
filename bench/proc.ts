/** Per-process CPU time and memory from Linux's /proc (the server is a separate process). */
import { readdirSync, readFileSync } from 'node:fs';

// USER_HZ: the unit of utime/stime in /proc/<pid>/stat. 100 on every mainstream Linux architecture.
const CLOCK_TICKS_PER_SECOND = 100;

/** User + system CPU seconds the process has used so far. */
export function readProcessCpuSeconds(pid: number | string): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: fields are counted after its closing ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** User + system CPU seconds of the process's main thread (its JavaScript event loop): /proc/<pid>/task/<pid>/stat. */
export function readMainThreadCpuSeconds(pid: number): number {
  return readProcessCpuSeconds(`${pid}/task/${pid}`);
}

/** A `Vm*` line of /proc/<pid>/status in KiB (VmHWM: peak resident set, VmRSS: current). */
export function readProcessMemoryKiB(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
  if (!match) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(match[1]);
}

/** The process and all its descendants (a `meshca ca --workers N` primary and its workers). */
export function processTree(pid: number): number[] {
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    const parent = tree[i]!;
    let threads: string[];
    try {
      threads = readdirSync(`/proc/${parent}/task`);
    } catch {
      continue;
    }
    // Linux lists children per thread (the one that forked them).
    for (const thread of threads) {
      let children = '';
      try {
        children = readFileSync(`/proc/${parent}/task/${thread}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const child of children.split(' ').filter(Boolean)) tree.push(Number(child));
    }
  }
  return tree;
}

/** CPU seconds of the process and its descendants that are still running (exited children are not counted). */
export function readProcessTreeCpuSeconds(pid: number): number {
  let total = 0;
  for (const member of processTree(pid)) {
    try {
      total += readProcessCpuSeconds(member);
    } catch {
      // It exited between the listing and the read.
    }
  }
  return total;
}

/** The sum of a `Vm*` field over the process and its running descendants. */
export function readProcessTreeMemoryKiB(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  let total = 0;
  for (const member of processTree(pid)) {
    try {
      total += readProcessMemoryKiB(member, field);
    } catch {
      // It exited between the listing and the read.
    }
  }
  return total;
}
