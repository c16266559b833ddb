import { describe, expect, it } from 'vitest';
import {
  defaultExportPath,
  exportFileName,
  formatBytes,
  formatEta,
  formatLoss,
  formatLr,
  formatRate,
  loraName,
  percent,
  safeFileStem,
  withSafetensors,
} from './format';

describe('formatEta', () => {
  it('shows seconds, minutes and hours', () => {
    expect(formatEta(0)).toBe('0 s');
    expect(formatEta(44.6)).toBe('45 s');
    expect(formatEta(185)).toBe('3 min 05 s');
    expect(formatEta(3600 * 2 + 7 * 60 + 30)).toBe('2 h 07 min');
  });

  it('shows a dash when unknown', () => {
    expect(formatEta(null)).toBe('—');
    expect(formatEta(undefined)).toBe('—');
    expect(formatEta(-5)).toBe('—');
    expect(formatEta(Number.POSITIVE_INFINITY)).toBe('—');
  });
});

describe('formatRate', () => {
  it('uses it/s from one step a second up', () => {
    expect(formatRate(2.3456)).toBe('2.35 it/s');
    expect(formatRate(1)).toBe('1.00 it/s');
    expect(formatRate(250.4)).toBe('250 it/s');
  });

  it('uses s/it for slow steps', () => {
    expect(formatRate(0.25)).toBe('4.0 s/it');
    expect(formatRate(1 / 12.34)).toBe('12.3 s/it');
  });

  it('shows a dash for no rate', () => {
    expect(formatRate(null)).toBe('—');
    expect(formatRate(0)).toBe('—');
    expect(formatRate(Number.NaN)).toBe('—');
  });
});

describe('formatLoss and formatLr', () => {
  it('keeps four significant digits', () => {
    expect(formatLoss(0.123456)).toBe('0.1235');
    expect(formatLoss(1.5)).toBe('1.500');
    expect(formatLoss(0.0000123)).toBe('1.230e-5');
    expect(formatLoss(null)).toBe('—');
  });

  it('writes learning rates in short scientific form', () => {
    expect(formatLr(1e-4)).toBe('1e-4');
    expect(formatLr(2.5e-6)).toBe('2.5e-6');
    expect(formatLr(0)).toBe('0');
  });
});

describe('formatBytes', () => {
  it('uses binary units', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KB');
    expect(formatBytes(3 * 1024 * 1024)).toBe('3.0 MB');
    expect(formatBytes(150 * 1024 * 1024)).toBe('150 MB');
  });
});

describe('percent', () => {
  it('is clamped and zero for an unknown total', () => {
    expect(percent(50, 200)).toBe(25);
    expect(percent(300, 200)).toBe(100);
    expect(percent(5, 0)).toBe(0);
  });
});

describe('exportFileName', () => {
  it('joins project and run label', () => {
    expect(exportFileName('Rex', 'DPO 1')).toBe('Rex-DPO-1.safetensors');
    expect(exportFileName('My dog: Rex?', 'DreamBooth')).toBe('My-dog-Rex-DreamBooth.safetensors');
    expect(exportFileName('', '')).toBe('lora.safetensors');
  });
});

describe('defaultExportPath', () => {
  it('puts <project>-<label>.safetensors under <dir>/exports', () => {
    expect(defaultExportPath('/home/a/Likeness', 'Rex', 'DPO 1')).toBe('/home/a/Likeness/exports/Rex-DPO-1.safetensors');
    expect(defaultExportPath('/home/a/Likeness/', 'Rex', 'DreamBooth')).toBe(
      '/home/a/Likeness/exports/Rex-DreamBooth.safetensors',
    );
    expect(defaultExportPath('/', '', '')).toBe('/exports/lora.safetensors');
  });

  it('joins with backslashes when the dir has one', () => {
    expect(defaultExportPath('C:\\Users\\a\\Likeness', 'Rex', 'DPO 2')).toBe(
      'C:\\Users\\a\\Likeness\\exports\\Rex-DPO-2.safetensors',
    );
  });

  it('keeps letters, digits, - and _ and makes everything else -', () => {
    expect(safeFileStem('My dog: Rex?')).toBe('My-dog--Rex-');
    expect(safeFileStem('a_b-c/d\\e.f')).toBe('a_b-c-d-e-f');
    expect(safeFileStem('Rëx 日本 2')).toBe('Rëx-日本-2');
  });
});

describe('withSafetensors / loraName', () => {
  it('appends the extension unless present', () => {
    expect(withSafetensors('/tmp/a')).toBe('/tmp/a.safetensors');
    expect(withSafetensors(' /tmp/a.safetensors ')).toBe('/tmp/a.safetensors');
    expect(withSafetensors('/tmp/a.SAFETENSORS')).toBe('/tmp/a.SAFETENSORS');
    expect(withSafetensors('/tmp/a.ckpt')).toBe('/tmp/a.ckpt.safetensors');
    expect(withSafetensors('  ')).toBe('');
  });

  it('takes the file name without the extension', () => {
    expect(loraName('/home/a/exports/Rex-DPO-1.safetensors')).toBe('Rex-DPO-1');
    expect(loraName('C:\\x\\y.safetensors')).toBe('y');
    expect(loraName('')).toBe('');
  });
});
