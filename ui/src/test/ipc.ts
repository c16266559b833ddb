// Test helpers over @tauri-apps/api/mocks.
//
// mockIPC replaces `window.__TAURI_INTERNALS__.invoke`: the handler receives each command's
// argument object as the UI passed it, so a `Channel` passed as `onEvent` arrives as the Channel
// object itself (not its `__CHANNEL__:<id>` wire form). The Rust side delivers a channel message by
// calling the channel's callback with `{ index, message }` — `index` counts from 0 and keeps the
// messages in order — which `emit` below does through the mock's `runCallback`.

import type { Channel } from '@tauri-apps/api/core';
import { mockIPC, mockWindows } from '@tauri-apps/api/mocks';
import type { JobEvent } from '../lib/types';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Args = any;
export type Handler = (args: Args) => unknown;

export interface Call {
  cmd: string;
  args: Args;
}

/**
 * Mocks the backend with one handler per command; every call is recorded. A command without a
 * handler answers `null`. A handler that throws (or returns a rejected promise) makes `invoke`
 * reject with that value, as a Rust command's `Err(String)` does.
 */
export function mockBackend(handlers: Record<string, Handler>): Call[] {
  const calls: Call[] = [];
  mockWindows('main');
  mockIPC(
    (cmd, args) => {
      calls.push({ cmd, args });
      const handler = handlers[cmd];
      return handler ? handler(args) : null;
    },
    { shouldMockEvents: true },
  );
  return calls;
}

export function callsOf(calls: Call[], cmd: string): Args[] {
  return calls.filter((c) => c.cmd === cmd).map((c) => c.args);
}

const nextIndex = new WeakMap<object, number>();

/** Sends messages on a channel the way the Rust side does (ordered by index). */
export function emit(channel: Channel<JobEvent>, ...events: JobEvent[]): void {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const internals = (window as any).__TAURI_INTERNALS__;
  for (const message of events) {
    const index = nextIndex.get(channel) ?? 0;
    nextIndex.set(channel, index + 1);
    internals.runCallback(channel.id, { index, message });
  }
}
