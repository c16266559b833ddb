import { describe, expect, it } from 'vitest';
import { errorLine, imageUrl } from './api';

const LINUX = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/605.1.15 (KHTML, like Gecko)';
const MAC = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)';
const WINDOWS = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Edg/120.0';

describe('imageUrl', () => {
  it('uses the likeness scheme on Linux and macOS', () => {
    expect(imageUrl('projects/1/photos/thumb-0001.png', LINUX)).toBe(
      'likeness://localhost/projects/1/photos/thumb-0001.png',
    );
    expect(imageUrl('a/b.png', MAC)).toBe('likeness://localhost/a/b.png');
  });

  it('uses http://likeness.localhost on Windows', () => {
    expect(imageUrl('projects/1/a.png', WINDOWS)).toBe('http://likeness.localhost/projects/1/a.png');
  });

  it('encodes each segment, keeping the slashes', () => {
    expect(imageUrl('projects/2/my photo #1?.png', LINUX)).toBe(
      'likeness://localhost/projects/2/my%20photo%20%231%3F.png',
    );
    expect(imageUrl('runs/Tëst 日本/100%.png', LINUX)).toBe(
      'likeness://localhost/runs/T%C3%ABst%20%E6%97%A5%E6%9C%AC/100%25.png',
    );
  });

  it('takes backslashes as separators and drops empty segments', () => {
    expect(imageUrl('runs\\3\\x y.png', WINDOWS)).toBe('http://likeness.localhost/runs/3/x%20y.png');
    expect(imageUrl('/a//b.png', LINUX)).toBe('likeness://localhost/a/b.png');
  });

  it('reads the user agent of the running webview by default', () => {
    expect(imageUrl('a.png')).toBe(
      navigator.userAgent.includes('Windows') ? 'http://likeness.localhost/a.png' : 'likeness://localhost/a.png',
    );
  });
});

describe('errorLine', () => {
  it('keeps the first non-empty line of a string error', () => {
    expect(errorLine('cannot read photo.jpg: denied\nbacktrace…')).toBe('cannot read photo.jpg: denied');
    expect(errorLine('\n  oops  ')).toBe('oops');
  });

  it('reads Error objects and others', () => {
    expect(errorLine(new Error('boom'))).toBe('boom');
    expect(errorLine({ code: 3 })).toBe('{"code":3}');
    expect(errorLine('')).toBe('Unknown error');
  });
});
