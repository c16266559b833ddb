import { clearMocks } from '@tauri-apps/api/mocks';
import { cleanup } from '@testing-library/svelte';
import { afterEach, beforeEach } from 'vitest';
import { app } from '../lib/app.svelte';

beforeEach(() => {
  localStorage.clear();
  location.hash = '';
  app.reset();
});

afterEach(() => {
  // Unmount first, so components unlisten while the mocks still stand.
  cleanup();
  clearMocks();
});
