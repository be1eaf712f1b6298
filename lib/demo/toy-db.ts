/**
 * The demo's embedded default: a small company database and questions with gold SQL, written by the project
 * (no external data). Also the unit tests' fixture.
 */
import Database from 'better-sqlite3';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';

export interface ToyExample {
  question: string;
  query: string;
}

const SCHEMA = `
CREATE TABLE department (
  dept_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  city TEXT NOT NULL,
  budget REAL NOT NULL
);
CREATE TABLE employee (
  emp_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  title TEXT NOT NULL,
  salary INTEGER NOT NULL,
  hire_year INTEGER NOT NULL,
  dept_id INTEGER REFERENCES department(dept_id),
  manager_id INTEGER REFERENCES employee(emp_id)
);
CREATE TABLE project (
  project_id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  dept_id INTEGER NOT NULL REFERENCES department(dept_id),
  start_year INTEGER NOT NULL
);
CREATE TABLE assignment (
  emp_id INTEGER NOT NULL REFERENCES employee(emp_id),
  project_id INTEGER NOT NULL REFERENCES project(project_id),
  hours INTEGER NOT NULL,
  PRIMARY KEY (emp_id, project_id)
);`;

const DEPARTMENTS: [number, string, string, number][] = [
  [1, 'Engineering', 'Berlin', 1200000], [2, 'Sales', 'Lisbon', 450000], [3, 'Research', 'Berlin', 800000],
  [4, 'Support', 'Porto', 200000], [5, 'Legal', 'Lisbon', 150000],
];
const EMPLOYEES: [number, string, string, number, number, number | null, number | null][] = [
  [1, 'Ada Moreira', 'Director', 185000, 2012, 1, null], [2, 'Bruno Silva', 'Engineer', 98000, 2016, 1, 1],
  [3, 'Carla Weber', 'Engineer', 104000, 2015, 1, 1], [4, 'Dieter Kohl', 'Scientist', 112000, 2014, 3, 1],
  [5, 'Eva Santos', 'Sales Lead', 87000, 2018, 2, 1], [6, 'Filipe Costa', 'Account Manager', 64000, 2020, 2, 5],
  [7, 'Greta Braun', 'Scientist', 99000, 2019, 3, 4], [8, 'Hugo Lima', 'Support Agent', 41000, 2021, 4, 5],
  [9, 'Ines Rocha', 'Support Agent', 43000, 2022, 4, 8], [10, 'Jonas Frank', 'Engineer', 91000, 2021, 1, 3],
  [11, 'Klara Vogel', 'Counsel', 120000, 2017, 5, 1], [12, 'Luis Pinto', 'Intern', 24000, 2024, null, 2],
];
const PROJECTS: [number, string, number, number][] = [
  [1, 'Atlas', 1, 2021], [2, 'Beacon', 3, 2022], [3, 'Comet', 1, 2023], [4, 'Delta', 2, 2023], [5, 'Echo', 4, 2024],
];
const ASSIGNMENTS: [number, number, number][] = [
  [2, 1, 120], [3, 1, 80], [3, 3, 60], [4, 2, 200], [7, 2, 150], [10, 3, 90], [5, 4, 40], [6, 4, 70], [8, 5, 30],
  [9, 5, 35], [1, 1, 10], [1, 2, 15],
];

/** Questions about the toy database with gold SQL (Spider style). */
export const TOY_EXAMPLES: readonly ToyExample[] = [
  { question: 'How many employees are there?', query: 'SELECT count(*) FROM employee' },
  { question: 'List the names of all departments.', query: 'SELECT name FROM department' },
  { question: 'What is the highest salary?', query: 'SELECT max(salary) FROM employee' },
  { question: 'Which departments are located in Berlin?', query: "SELECT name FROM department WHERE city = 'Berlin'" },
  { question: 'Show the names of employees hired after 2019.', query: 'SELECT name FROM employee WHERE hire_year > 2019' },
  { question: 'What is the average salary of engineers?', query: "SELECT avg(salary) FROM employee WHERE title = 'Engineer'" },
  { question: 'How many projects does each department run? Give department name and count.',
    query: 'SELECT d.name, count(*) FROM project AS p JOIN department AS d ON p.dept_id = d.dept_id GROUP BY d.name' },
  { question: 'List employee names ordered by salary from highest to lowest.', query: 'SELECT name FROM employee ORDER BY salary DESC' },
  { question: 'Which employees work on the project Atlas?',
    query: "SELECT e.name FROM employee AS e JOIN assignment AS a ON e.emp_id = a.emp_id JOIN project AS p ON a.project_id = p.project_id WHERE p.name = 'Atlas'" },
  { question: 'What is the total number of hours assigned to each project? Show project name and hours.',
    query: 'SELECT p.name, sum(a.hours) FROM project AS p JOIN assignment AS a ON p.project_id = a.project_id GROUP BY p.name' },
  { question: 'Which employees have no department?', query: 'SELECT name FROM employee WHERE dept_id IS NULL' },
  { question: 'What is the budget of the Sales department?', query: "SELECT budget FROM department WHERE name = 'Sales'" },
];

/** Creates (or recreates) the toy database at `path`. */
export function createToyDatabase(path: string): string {
  mkdirSync(dirname(path), { recursive: true });
  rmSync(path, { force: true });
  const db = new Database(path);
  try {
    db.exec(SCHEMA);
    const tx = db.transaction(() => {
      const d = db.prepare('INSERT INTO department VALUES (?, ?, ?, ?)');
      for (const r of DEPARTMENTS) d.run(...r);
      const e = db.prepare('INSERT INTO employee VALUES (?, ?, ?, ?, ?, ?, ?)');
      for (const r of EMPLOYEES) e.run(...r);
      const p = db.prepare('INSERT INTO project VALUES (?, ?, ?, ?)');
      for (const r of PROJECTS) p.run(...r);
      const a = db.prepare('INSERT INTO assignment VALUES (?, ?, ?)');
      for (const r of ASSIGNMENTS) a.run(...r);
    });
    tx();
  } finally {
    db.close();
  }
  return path;
}
